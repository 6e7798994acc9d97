//! The connection level: head, idle and body timeouts, the connection cap, refusing an
//! over-limit key from its headers (`X-Event-Count`; a Segment write key in the headers), and JSON bodies on the HTTP layer's own
//! answers to unreadable heads.

use std::time::{Duration, Instant};

use ess_core::config::ApiKey;
use ess_testkit::Ephemeral;

use ess_testkit::http::Ending;

use crate::harness::{
    KEY, Raw, SLOW_KEY, Server, assert_topic_holds, metric, open_files_limit, raw_post, read_topic,
    uploading, with_keys,
};

/// The first part of a request head, never finished.
const HALF_HEAD: &[u8] = b"POST /v1/events HTTP/1.1\r\nHost: x\r\n";

/// The reply refuses with `status`, the JSON `error` code and a `Retry-After` starting with
/// `retry_after`, within `within` of `started` (rather than after a timeout).
fn assert_refused_at_once(
    reply: &Ending,
    started: Instant,
    (status, error, retry_after): (u16, &str, &str),
    within: Duration,
) {
    assert_eq!(reply.status(), Some(status), "{}", reply.text());
    assert_eq!(reply.json()["error"], error);
    let header = format!("retry-after: {retry_after}");
    assert!(reply.text().to_ascii_lowercase().contains(&header));
    assert!(started.elapsed() < within, "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_closed_by_the_head_timeout_while_others_are_served() {
    // Client and server sockets are both in this process.
    let limit = open_files_limit();
    let count = 2500.min((limit.saturating_sub(500) / 2) as usize);
    assert!(
        count >= 1000,
        "the open-files limit ({limit}) allows only {count} connections; raise it (ulimit -n 8192)"
    );
    let eph = Ephemeral::new(1).await;
    let mut config = with_keys(eph.config.clone());
    let head_timeout = Duration::from_secs(2);
    config.ingest.head_timeout = head_timeout;
    config.ingest.max_connections = count + 100;
    let (server, client) = Server::ready(config.clone()).await;

    // Most send half a head; every fifth sends nothing at all.
    let mut raws = Vec::with_capacity(count);
    for i in 0..count {
        let mut raw = Raw::connect(server.addr).await;
        if i % 5 != 0 {
            raw.send(HALF_HEAD).await;
        }
        raws.push(raw);
    }
    // Meanwhile a well-formed request is served.
    let ids = client
        .post("/v1/events", r#"{"type":"served"}"#)
        .await
        .ids();

    let deadline = Instant::now() + head_timeout + Duration::from_secs(10);
    let endings = futures::future::join_all(raws.iter_mut().map(|raw| async move {
        let ending = raw.until_closed(deadline).await;
        (raw.opened, ending)
    }))
    .await;
    let mut failures = Vec::new();
    for (i, (opened, ending)) in endings.iter().enumerate() {
        let Some(closed_at) = ending.closed_at else {
            failures.push(format!("connection {i} still open"));
            continue;
        };
        let after = closed_at - *opened;
        if after < head_timeout - Duration::from_millis(100)
            || after > head_timeout + Duration::from_secs(2)
        {
            failures.push(format!("connection {i} closed after {after:?}"));
        }
        let expected = if i % 5 == 0 { None } else { Some(408) };
        if ending.status() != expected {
            failures.push(format!("connection {i}: {:?}", ending.text()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count}: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let timeouts = metric(
        &client,
        "ess_ingest_connection_timeouts_total{phase=\"head\"}",
    )
    .await;
    assert_eq!(timeouts, Some(count as f64));
    assert_topic_holds(&config, &ids).await;
    server.stop().await;
    eph.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let eph = Ephemeral::new(1).await;
    let mut config = with_keys(eph.config.clone());
    let idle = Duration::from_secs(1);
    config.ingest.idle_timeout = idle;
    config.ingest.head_timeout = Duration::from_secs(5);
    let (server, client) = Server::ready(config.clone()).await;
    let mut ids = Vec::new();

    // A connection in use keeps living past the idle timeout, request after request.
    let mut busy = Raw::connect(server.addr).await;
    let started = Instant::now();
    while started.elapsed() < idle * 3 {
        busy.send(&raw_post("/v1/events", KEY, r#"{"type":"busy"}"#))
            .await;
        let reply = busy.response(Duration::from_secs(5)).await;
        assert_eq!(reply.status(), Some(202), "{}", reply.text());
        ids.push(reply.json()["ids"][0].as_str().expect("id").to_owned());
        tokio::time::sleep(idle / 3).await;
    }

    // Connections that go quiet after their request are closed after the idle timeout.
    let mut quiet = Vec::new();
    for _ in 0..20 {
        let mut raw = Raw::connect(server.addr).await;
        raw.send(&raw_post("/v1/events", KEY, r#"{"type":"quiet"}"#))
            .await;
        let reply = raw.response(Duration::from_secs(5)).await;
        assert_eq!(reply.status(), Some(202), "{}", reply.text());
        ids.push(reply.json()["ids"][0].as_str().expect("id").to_owned());
        quiet.push((Instant::now(), raw));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let endings = futures::future::join_all(
        quiet
            .iter_mut()
            .map(|(answered, raw)| async move { (*answered, raw.until_closed(deadline).await) }),
    )
    .await;
    for (answered, ending) in endings {
        let closed_at = ending.closed_at.expect("an idle connection is closed");
        let after = closed_at - answered;
        assert!(
            after >= idle - Duration::from_millis(100) && after < idle + Duration::from_secs(2),
            "closed {after:?} after the response"
        );
        assert!(ending.bytes.is_empty(), "{:?}", ending.text());
    }
    let timeouts = metric(
        &client,
        "ess_ingest_connection_timeouts_total{phase=\"idle\"}",
    )
    .await;
    assert!(timeouts >= Some(20.0), "{timeouts:?}");
    let records = read_topic(&config.kafka.brokers, &config.kafka.topic, ids.len()).await;
    crate::harness::assert_exactly_once(&records, &ids);
    server.stop().await;
    eph.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_quick_503() {
    let eph = Ephemeral::new(1).await;
    let mut config = with_keys(eph.config.clone());
    config.ingest.max_connections = 20;
    config.ingest.head_timeout = Duration::from_secs(30);
    let (server, client) = Server::ready(config.clone()).await;
    // The client's kept-alive connection is one; 19 more fill the cap.
    let mut held = Vec::new();
    for _ in 0..19 {
        held.push(Raw::connect(server.addr).await);
    }
    ess_testkit::eventually(Duration::from_secs(5), "20 connections open", || async {
        (metric(&client, "ess_ingest_connections_open ").await == Some(20.0)).then_some(())
    })
    .await;

    let started = Instant::now();
    let mut over = Raw::connect(server.addr).await;
    over.send(&raw_post("/v1/events", KEY, r#"{"type":"over"}"#))
        .await;
    let reply = over.response(Duration::from_secs(5)).await;
    // At once: not after a timeout (the head timeout here is 30 s).
    assert_refused_at_once(
        &reply,
        started,
        (503, "overloaded", "1"),
        Duration::from_secs(3),
    );
    // Open connections are still served.
    let ids = client.post("/v1/events", r#"{"type":"in"}"#).await.ids();
    // At least the one above (the client's pool may also have tried a new connection).
    let refused = metric(&client, "ess_ingest_connections_refused_total").await;
    assert!(refused >= Some(1.0), "{refused:?}");

    // Once some close, new connections are served again.
    held.truncate(10);
    let again = ess_testkit::eventually(Duration::from_secs(5), "a new connection served", || {
        let addr = server.addr;
        async move {
            let mut raw = Raw::connect(addr).await;
            raw.send(&raw_post("/v1/events", KEY, r#"{"type":"again"}"#))
                .await;
            let reply = raw.response(Duration::from_secs(5)).await;
            (reply.status() == Some(202))
                .then(|| reply.json()["ids"][0].as_str().map(str::to_owned))
                .flatten()
        }
    })
    .await;
    let records = read_topic(&config.kafka.brokers, &config.kafka.topic, 2).await;
    crate::harness::assert_exactly_once(&records, &[ids[0].clone(), again]);
    assert_eq!(records.len(), 2, "the refused request was not produced");
    drop(held);
    server.stop().await;
    eph.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gets_408() {
    let eph = Ephemeral::new(1).await;
    let mut config = with_keys(eph.config.clone());
    config.ingest.read_timeout = Duration::from_secs(1);
    let (server, _client) = Server::ready(config.clone()).await;
    let mut raw = Raw::connect(server.addr).await;
    let started = Instant::now();
    raw.send(&uploading(KEY)).await;
    let reply = raw.response(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_eq!(reply.status(), Some(408), "{}", reply.text());
    assert_eq!(reply.json()["error"], "request_timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    server.stop().await;
    eph.cleanup().await;
}

/// SLOW_KEY (a burst of 3, 1 token a second) spends its burst on `spend`, then sends `head`
/// announcing a large body and no body: it is refused 429 at once, not after `read_timeout`.
async fn out_of_tokens_is_refused_before_the_body(spend: Vec<u8>, head: String, ok: u16) {
    let eph = Ephemeral::new(1).await;
    let mut config = with_keys(eph.config.clone());
    config.ingest.read_timeout = Duration::from_secs(5);
    let (server, _client) = Server::ready(config.clone()).await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&spend).await;
    assert_eq!(
        raw.response(Duration::from_secs(5)).await.status(),
        Some(ok)
    );
    let started = Instant::now();
    raw.send(head.as_bytes()).await;
    let reply = raw.response(Duration::from_secs(10)).await;
    // The read timeout would have given 408 after 5 s.
    assert_refused_at_once(
        &reply,
        started,
        (429, "rate_limited", "1"),
        Duration::from_secs(4),
    );
    server.stop().await;
    eph.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_out_of_tokens_is_refused_before_its_body_is_read() {
    let spend = raw_post(
        "/v1/events/batch",
        SLOW_KEY,
        r#"[{"type":"a"},{"type":"a"},{"type":"a"}]"#,
    );
    let head = format!(
        "POST /v1/events/batch HTTP/1.1\r\nhost: x\r\nx-api-key: {SLOW_KEY}\r\n\
         content-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    );
    out_of_tokens_is_refused_before_the_body(spend, head, 202).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_write_key_out_of_tokens_is_refused_before_its_body_is_read() {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{SLOW_KEY}:"));
    let head = |length: usize| {
        format!(
            "POST /v1/batch HTTP/1.1\r\nhost: x\r\nauthorization: Basic {basic}\r\n\
             content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
        )
    };
    let call = r#"{"type":"track","event":"e","userId":"u"}"#;
    let body = format!(r#"{{"batch":[{call},{call},{call}]}}"#);
    let spend = format!("{}{body}", head(body.len())).into_bytes();
    out_of_tokens_is_refused_before_the_body(spend, head(100_000), 200).await;
}

/// A key with a burst of 10 events, refilled at 1 event a second.
const TEN_KEY: &str = "ten-key-0123456789abcdef";

/// A batch request head for `TEN_KEY` declaring `declared` events and `length` body bytes.
fn declaring_head(declared: &str, length: usize) -> Vec<u8> {
    format!(
        "POST /v1/events/batch HTTP/1.1\r\nhost: x\r\nx-api-key: {TEN_KEY}\r\n\
         content-type: application/json\r\nx-event-count: {declared}\r\n\
         content-length: {length}\r\n\r\n"
    )
    .into_bytes()
}

fn batch_of(n: usize, kind: &str) -> String {
    let events: Vec<String> = (0..n).map(|_| format!(r#"{{"type":"{kind}"}}"#)).collect();
    format!("[{}]", events.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_event_count_is_charged_from_the_headers_and_checked_against_the_body() {
    let eph = Ephemeral::new(1).await;
    let mut config = with_keys(eph.config.clone());
    config.ingest.api_keys.push(ApiKey {
        id: "ten".into(),
        key: TEN_KEY.into(),
        rate_per_sec: 1,
        burst: 10,
    });
    config.ingest.read_timeout = Duration::from_secs(10);
    let (server, client) = Server::ready(config.clone()).await;

    // Malformed declarations are refused whatever the bucket holds, and cost nothing.
    for (path, declared) in [
        ("/v1/events/batch", "0"),
        ("/v1/events/batch", "many"),
        ("/v1/events/batch", "1001"),
        ("/v1/events", "2"),
    ] {
        let reply = client
            .send(
                "POST",
                path,
                &[
                    ("x-api-key", TEN_KEY),
                    ("content-type", "application/json"),
                    ("x-event-count", declared),
                ],
                r#"{"type":"never"}"#.into(),
            )
            .await;
        assert_eq!(reply.status, 400, "{declared}: {:?}", reply.body);
        assert_eq!(reply.json()["error"], "invalid_event_count");
    }

    // Two heads declaring 4 events each take 8 of the 10 tokens before sending their bodies.
    let four = batch_of(4, "first");
    let mut first = Raw::connect(server.addr).await;
    first.send(&declaring_head("4", four.len())).await;
    let mut liar = Raw::connect(server.addr).await;
    liar.send(&declaring_head("4", batch_of(5, "lie").len()))
        .await;
    ess_testkit::eventually(Duration::from_secs(5), "both heads taken in", || async {
        let held = metric(&client, "ess_ingest_buffered_bytes ").await?;
        (held >= (four.len() + batch_of(5, "lie").len()) as f64).then_some(())
    })
    .await;
    // A third head declaring 5 is refused at once, although its body never comes.
    let mut stalled = Raw::connect(server.addr).await;
    let started = Instant::now();
    stalled.send(&declaring_head("5", 1000)).await;
    let reply = stalled.response(Duration::from_secs(5)).await;
    // At once: not after the read timeout (30 s) a missing body would take.
    assert_refused_at_once(
        &reply,
        started,
        (429, "rate_limited", ""),
        Duration::from_secs(3),
    );

    // The first sends what it declared: 202.
    first.send(four.as_bytes()).await;
    let reply = first.response(Duration::from_secs(5)).await;
    assert_eq!(reply.status(), Some(202), "{}", reply.text());
    let mut ids: Vec<String> = reply.json()["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().expect("id").to_owned())
        .collect();
    // The liar sends 5 events after declaring 4: refused whole, its tokens given back.
    liar.send(batch_of(5, "lie").as_bytes()).await;
    let reply = liar.response(Duration::from_secs(5)).await;
    assert_eq!(reply.status(), Some(400), "{}", reply.text());
    assert_eq!(reply.json()["error"], "event_count_mismatch");
    // An invalid batch declaring 4 costs nothing either.
    let invalid = r#"[{"type":"a"},{"type":"a"},{"type":"a"},{"typ":"a"}]"#;
    let mut bad = Raw::connect(server.addr).await;
    bad.send(&declaring_head("4", invalid.len())).await;
    bad.send(invalid.as_bytes()).await;
    let reply = bad.response(Duration::from_secs(5)).await;
    assert_eq!(reply.status(), Some(400), "{}", reply.text());
    assert_eq!(reply.json()["error"], "unknown_field");
    // So 6 tokens are there (2 left + 4 given back, and what refilled meanwhile).
    let six = batch_of(6, "last");
    let mut last = Raw::connect(server.addr).await;
    last.send(&declaring_head("6", six.len())).await;
    last.send(six.as_bytes()).await;
    let reply = last.response(Duration::from_secs(5)).await;
    assert_eq!(reply.status(), Some(202), "{}", reply.text());
    ids.extend(reply.ids());

    // Every accepted event is in Kafka, and nothing of the refused requests.
    let records = read_topic(&config.kafka.brokers, &config.kafka.topic, 10).await;
    crate::harness::assert_exactly_once(&records, &ids);
    assert_eq!(records.len(), 10);
    server.stop().await;
    eph.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_request_heads_get_a_json_error_body() {
    let eph = Ephemeral::new(1).await;
    let config = with_keys(eph.config.clone());
    let (server, client) = Server::ready(config).await;
    // Just under 32 KiB of head, never finished: the whole read buffer, nothing left unread.
    let mut oversized = b"POST /v1/events HTTP/1.1\r\nhost: x\r\nx-pad: ".to_vec();
    oversized.resize(32 * 1024, b'a');
    let cases: [(&[u8], u16, &str); 4] = [
        (b"GARBAGE\r\n\r\n", 400, "invalid_request"),
        (
            b"POST /v1/events HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n",
            400,
            "invalid_request",
        ),
        (
            b"POST /v1/ev ents HTTP/1.1\r\nhost: x\r\n\r\n",
            400,
            "invalid_request",
        ),
        (&oversized, 431, "headers_too_large"),
    ];
    for (request, status, code) in cases {
        let mut raw = Raw::connect(server.addr).await;
        raw.send(request).await;
        let ending = raw
            .until_closed(Instant::now() + Duration::from_secs(5))
            .await;
        assert!(ending.closed_at.is_some(), "{code}: connection left open");
        assert_eq!(ending.status(), Some(status), "{}", ending.text());
        let head = ending.text().to_ascii_lowercase();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(ending.json()["error"], code, "{}", ending.text());
        assert!(
            ending.json()["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            ending.text()
        );
    }
    // A request on a healthy connection is still served.
    client.post("/v1/events", r#"{"type":"fine"}"#).await.ids();
    server.stop().await;
    eph.cleanup().await;
}
