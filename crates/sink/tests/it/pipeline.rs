//! Events in, rows out: every column exact, dead letters for poison, restarts without
//! duplicates.

use std::time::Duration;

use ess_core::config::{Config, WritePath};
use ess_core::schema::EventRow;
use ess_testkit::Ephemeral;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;

use crate::support::*;

#[tokio::test]
async fn every_event_is_stored_once_with_exact_columns_and_offsets_committed() {
    let eph = Ephemeral::new(4).await;
    let config = test_config(eph.config.clone());
    stop_merges(&config).await;
    let producer = producer(&config);
    produce(&config, &producer, 20_000, 0).await;
    let sink = InProcess::start(&config).await;
    let (count, uniq) = wait_for_rows(&config, 20_000, Duration::from_secs(60)).await;
    assert_eq!((count, uniq), (20_000, 20_000));
    // The endpoints: alive, ready (assigned and reconciled), and counting what it stored.
    assert_eq!(http_get(sink.addr(), "/healthz").await.0, 200);
    assert_eq!(http_get(sink.addr(), "/readyz").await.0, 200);
    let (status, metrics) = http_get(sink.addr(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metric(&metrics, "ess_sink_rows_total") >= 20_000.0,
        "rows counted: {}",
        metric(&metrics, "ess_sink_rows_total")
    );

    // One event read back column by column.
    let (id, json) = event_json(7);
    produce_raw(&config, &producer, 2, &id.to_string(), &json).await;
    wait_for_rows(&config, 20_001, Duration::from_secs(30)).await;
    let sent = ess_core::wire::WireEvent::from_json(&json).expect("json");
    let client = eph.client(&config.clickhouse.url).await;
    let schema = &eph.migrated.schema;
    let row: EventRow = client
        .query(&format!(
            "SELECT id, type, source, user_id, anonymous_id, ip, user_agent, context, {}, {}, {}, \
             properties, kafka_partition, kafka_offset FROM {} WHERE id = toUUID(?)",
            schema.millis("event_time"),
            schema.millis("ingest_time"),
            schema.millis("store_time"),
            config.clickhouse.table
        ))
        .bind(id.to_string())
        .fetch_one()
        .await
        .expect("row");
    assert_eq!(row.id, id);
    assert_eq!(row.kind, "page_view");
    assert_eq!(row.source, "it");
    assert_eq!(
        row.event_time, sent.timestamp.0,
        "event time to the millisecond"
    );
    assert_eq!(
        row.ingest_time, sent.ingest_time.0,
        "ingest time to the millisecond"
    );
    assert!(row.store_time >= row.ingest_time);
    assert_eq!(
        row.properties,
        sent.properties.get(),
        "unicode properties byte for byte"
    );
    assert_eq!(row.kafka_partition, 2);

    sink.stop().await.expect("graceful stop returns Ok");
    assert_eq!(
        committed_total(&config, 4),
        20_001,
        "every offset committed on shutdown"
    );
    assert_eq!(counts(&config).await, (20_001, 20_001));
    eph.cleanup().await;
}

#[tokio::test]
async fn a_poison_message_goes_to_the_dead_letter_topic_and_the_partition_moves_on() {
    let eph = Ephemeral::new(1).await;
    let config = test_config(eph.config.clone());
    stop_merges(&config).await;
    let producer = producer(&config);
    produce(&config, &producer, 100, 0).await;
    produce_raw(&config, &producer, 0, "poison", b"{not json").await;
    produce(&config, &producer, 100, 100).await;
    let sink = InProcess::start(&config).await;
    assert_eq!(
        wait_for_rows(&config, 200, Duration::from_secs(60)).await,
        (200, 200)
    );

    let dlq: StreamConsumer = ess_core::kafka::client_config(&config.kafka)
        .set("group.id", format!("{}.dlq-reader", config.sink.group_id))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "2000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("consumer");
    dlq.subscribe(&[&config.kafka.dlq_topic])
        .expect("subscribe");
    let msg = tokio::time::timeout(Duration::from_secs(30), dlq.recv())
        .await
        .expect("a dead letter within 30 s")
        .expect("message");
    assert_eq!(msg.payload(), Some(&b"{not json"[..]));
    assert_eq!(msg.key(), Some(&b"poison"[..]));
    let headers = msg.headers().expect("headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert!(
        header("ess-error").is_some_and(|e| e.contains("undecodable")),
        "{:?}",
        header("ess-error")
    );
    assert_eq!(header("ess-source-partition").as_deref(), Some("0"));
    assert_eq!(header("ess-source-offset").as_deref(), Some("100"));
    drop(msg);
    drop(dlq);

    sink.stop().await.expect("stop");
    assert_eq!(
        committed_total(&config, 1),
        201,
        "the poison offset is committed too"
    );
    eph.cleanup().await;
}

#[tokio::test]
async fn rows_stored_but_not_committed_are_not_written_again() {
    // A sink that died after ClickHouse acknowledged a batch and before it committed leaves
    // rows whose offsets are past the committed one. Stand in for it: insert rows for offsets
    // 0..300 of partition 0 directly (the same events the topic holds), commit nothing.
    let eph = Ephemeral::new(1).await;
    let config = test_config(eph.config.clone());
    stop_merges(&config).await;
    let events = produce_to_partition_0(&config, 1_000).await;
    insert_at_offsets(&eph, &config, &events[..300]).await;

    let sink = InProcess::start(&config).await;
    assert_eq!(
        wait_for_rows(&config, 1_000, Duration::from_secs(60)).await,
        (1_000, 1_000)
    );
    sink.stop().await.expect("stop");
    assert_eq!(
        counts(&config).await,
        (1_000, 1_000),
        "nothing written twice"
    );
    eph.cleanup().await;
}

#[tokio::test]
async fn rows_of_an_earlier_topic_at_the_same_offsets_do_not_hide_new_events() {
    // The topic was deleted and created again (or the broker keeps topics in memory and
    // restarted): its offsets start at 0 again while the table still holds the earlier topic's
    // rows at offsets 0..300 of partition 0. Those are other events; every new one is stored.
    let eph = Ephemeral::new(1).await;
    let config = test_config(eph.config.clone());
    stop_merges(&config).await;
    let earlier: Vec<Vec<u8>> = (0..300u64).map(|i| event_json(i).1).collect();
    insert_at_offsets(&eph, &config, &earlier).await;
    produce_to_partition_0(&config, 1_000).await;

    let sink = InProcess::start(&config).await;
    assert_eq!(
        wait_for_rows(&config, 1_300, Duration::from_secs(60)).await,
        (1_300, 1_300)
    );
    sink.stop().await.expect("stop");
    assert_eq!(
        committed_total(&config, 1),
        1_000,
        "every new offset committed"
    );
    assert_eq!(counts(&config).await, (1_300, 1_300));
    eph.cleanup().await;
}

/// Produces `n` events to partition 0 in order (offsets 0..n) and returns their JSON.
async fn produce_to_partition_0(config: &Config, n: u64) -> Vec<Vec<u8>> {
    let producer = producer(config);
    let mut events = Vec::new();
    for i in 0..n {
        let (id, json) = event_json(i);
        produce_raw(config, &producer, 0, &id.to_string(), &json).await;
        events.push(json);
    }
    events
}

/// Inserts `events` as rows of partition 0 at offsets 0.. (as a sink would have), without
/// committing anything, and waits until every shard shows them.
async fn insert_at_offsets(eph: &Ephemeral, config: &Config, events: &[Vec<u8>]) {
    let client = eph.client(&config.clickhouse.url).await;
    let mut data = Vec::new();
    for (offset, json) in events.iter().enumerate() {
        let event = ess_core::wire::WireEvent::from_json(json).expect("json");
        ess_sink::encode::encode_row(&mut data, &event, 1, 0, offset as i64);
    }
    let mut insert = client
        .clone()
        .with_setting("insert_distributed_sync", "1")
        .insert_formatted_with(format!(
            "INSERT INTO {} ({}) FORMAT RowBinary",
            config.clickhouse.table,
            ess_sink::encode::COLUMNS
        ));
    insert.send(data.into()).await.expect("send");
    insert.end().await.expect("insert");
    // The insert was acknowledged by one replica per shard; the other catches up shortly.
    let n = events.len() as u64;
    assert_eq!(
        wait_for_rows(config, n, Duration::from_secs(30)).await,
        (n, n)
    );
}

#[tokio::test]
async fn both_write_paths_put_every_row_on_the_shard_clickhouse_chooses() {
    for path in [WritePath::Shards, WritePath::Distributed] {
        let eph = Ephemeral::new(4).await;
        let mut config = test_config(eph.config.clone());
        config.sink.write_path = path;
        stop_merges(&config).await;
        let producer = producer(&config);
        produce(&config, &producer, 6_000, 0).await;
        let sink = InProcess::start(&config).await;
        assert_eq!(
            wait_for_rows(&config, 6_000, Duration::from_secs(60)).await,
            (6_000, 6_000),
            "{path:?}"
        );
        sink.stop().await.expect("stop");

        // Every node holds only rows whose cityHash64(toString(id)), as the server computes
        // it, picks that node's shard; the replicas of a shard end equal and the shards add up.
        let mut clients = Vec::new();
        for url in config.clickhouse.all_nodes() {
            clients.push((url.clone(), eph.client(&url).await));
        }
        let sql = format!(
            "SELECT (SELECT any(shard_num) FROM system.clusters WHERE cluster = '{}' AND is_local) \
             AS shard, count(), countIf(cityHash64(toString(id)) % 2 + 1 != shard) FROM {}",
            config.clickhouse.cluster,
            config.clickhouse.local_table()
        );
        let nodes = ess_testkit::eventually(Duration::from_secs(30), "replicas equal", || {
            let (clients, sql) = (&clients, &sql);
            async move {
                let mut nodes = Vec::new();
                for (url, client) in clients {
                    let (shard, rows, misplaced): (u32, u64, u64) =
                        client.query(sql).fetch_one().await.ok()?;
                    nodes.push((url.clone(), shard, rows, misplaced));
                }
                let rows_of = |s: u32| -> Vec<u64> {
                    nodes.iter().filter(|n| n.1 == s).map(|n| n.2).collect()
                };
                let (one, two) = (rows_of(1), rows_of(2));
                let settled = one.len() == 2
                    && two.len() == 2
                    && one[0] == one[1]
                    && two[0] == two[1]
                    && one[0] + two[0] == 6_000;
                settled.then_some(nodes)
            }
        })
        .await;
        for (url, shard, rows, misplaced) in nodes {
            assert_eq!(misplaced, 0, "{path:?}: rows on the wrong shard at {url}");
            assert!(
                rows > 2_000,
                "{path:?}: shard {shard} holds only {rows} rows"
            );
        }
        eph.cleanup().await;
    }
}

#[tokio::test]
async fn rows_clickhouse_refuses_go_to_the_dead_letter_topic_and_the_rest_is_stored() {
    let eph = Ephemeral::new(1).await;
    let config = test_config(eph.config.clone());
    stop_merges(&config).await;
    // The table refuses a row whose source is "poison" (code 6, CANNOT_PARSE_TEXT), as it
    // would refuse a value it cannot take.
    let client = eph.client(&config.clickhouse.url).await;
    client
        .query(&format!(
            "ALTER TABLE {}.{} ON CLUSTER {} ADD COLUMN refuse UInt8 \
             MATERIALIZED toUInt8(if(source = 'poison', 'x', '0'))",
            config.clickhouse.database,
            config.clickhouse.local_table(),
            config.clickhouse.cluster
        ))
        .execute()
        .await
        .expect("alter");
    let producer = producer(&config);
    let mut poison = Vec::new();
    for i in 0..600u64 {
        let source = if i % 200 == 77 { "poison" } else { "it" };
        let (id, json) = event_json_at(i, source, ess_core::wire::Millis::now().0);
        if source == "poison" {
            poison.push(id);
        }
        produce_raw(&config, &producer, 0, &id.to_string(), &json).await;
    }
    let sink = InProcess::start(&config).await;
    assert_eq!(
        wait_for_rows(&config, 597, Duration::from_secs(60)).await,
        (597, 597)
    );

    let dlq: StreamConsumer = ess_core::kafka::client_config(&config.kafka)
        .set("group.id", format!("{}.dlq-reader", config.sink.group_id))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    dlq.subscribe(&[&config.kafka.dlq_topic])
        .expect("subscribe");
    let mut letters = Vec::new();
    while letters.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(30), dlq.recv())
            .await
            .expect("three dead letters within 30 s")
            .expect("message");
        let reason = msg
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "ess-error"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let event = ess_core::wire::WireEvent::from_json(msg.payload().unwrap_or_default())
            .expect("a dead letter of a refused row is the event as JSON");
        assert!(reason.contains("clickhouse refused"), "{reason}");
        assert_eq!(msg.key(), Some(event.id.to_string().as_bytes()));
        letters.push(event.id);
    }
    letters.sort();
    poison.sort();
    assert_eq!(letters, poison, "exactly the refused rows");
    drop(dlq);
    sink.stop().await.expect("stop");
    assert_eq!(counts(&config).await, (597, 597));
    assert_eq!(
        committed_total(&config, 1),
        600,
        "refused rows are committed too"
    );
    eph.cleanup().await;
}

#[tokio::test]
async fn events_over_more_than_a_hundred_months_are_stored_whole_in_blocks_by_month() {
    let eph = Ephemeral::new(2).await;
    let mut config = test_config(eph.config.clone());
    config.sink.batch_rows = 100_000;
    config.sink.batch_max_wait = Duration::from_secs(2);
    stop_merges(&config).await;
    let producer = producer(&config);
    // 2,600 events over 130 months from January 2015: a backfill.
    let month_ms = 31 * 86_400_000i64;
    let sends = (0..2_600u64).map(|i| {
        let t = 1_420_070_400_000 + (i % 130) as i64 * month_ms + i as i64;
        let (id, json) = event_json_at(i, "backfill", t);
        let (config, producer) = (&config, &producer);
        async move {
            produce_raw(config, producer, (i % 2) as i32, &id.to_string(), &json).await;
        }
    });
    futures::future::join_all(sends).await;
    let sink = InProcess::start(&config).await;
    assert_eq!(
        wait_for_rows(&config, 2_600, Duration::from_secs(60)).await,
        (2_600, 2_600)
    );
    let (_, metrics) = http_get(sink.addr(), "/metrics").await;
    assert!(
        metric(&metrics, "ess_sink_month_splits_total") >= 1.0,
        "a part spanning 130 months was split"
    );
    sink.stop().await.expect("stop");
    let client = eph.client(&config.clickhouse.url).await;
    let months: u64 = client
        .query(&format!(
            "SELECT uniqExact(toYYYYMM(toDateTime(intDiv({}, 1000), 'UTC'))) FROM {}",
            eph.migrated.schema.millis("event_time"),
            config.clickhouse.table
        ))
        .fetch_one()
        .await
        .expect("months");
    assert_eq!(months, 130);
    assert_eq!(counts(&config).await, (2_600, 2_600));
    assert_eq!(committed_total(&config, 2), 2_600);
    eph.cleanup().await;
}
