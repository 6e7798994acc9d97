//! `ess migrate` and the tables: sharding, replication, idempotence, millisecond times.

use std::time::Duration;

use ess_core::schema::EventRow;

use ess_testkit::{Ephemeral, eventually};

fn row(i: i64) -> EventRow {
    EventRow {
        id: uuid::Uuid::new_v4(),
        kind: "page_view".into(),
        source: "it".into(),
        event_time: 1_764_000_000_001 + i,
        ingest_time: 1_764_000_000_123 + i,
        store_time: 1_764_000_000_999 + i,
        properties: r#"{"path":"/ü","n":1}"#.into(),
        kafka_partition: 0,
        kafka_offset: i,
        user_id: "użytkownik \"7\"".into(),
        anonymous_id: String::new(),
        ip: "2001:db8::7".into(),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64) 🦀".into(),
        context: r#"{"page":{"title":"Grüße"},"tz":"Europe/Berlin"}"#.into(),
    }
}

#[tokio::test]
async fn a_row_through_distributed_lands_on_one_shard_and_both_its_replicas() {
    let eph = Ephemeral::new(1).await;
    let ch = &eph.config.clickhouse;
    let client = eph.client(&ch.url).await;
    let stored = row(0);
    let mut insert = client
        .clone()
        .with_setting("insert_distributed_sync", "1")
        .insert::<EventRow>(&ch.table)
        .await
        .expect("insert");
    insert.write(&stored).await.expect("write");
    insert.end().await.expect("end");

    // Nodes 1,2 are shard 1; nodes 3,4 shard 2.
    let local = eph.migrated.schema.local_table();
    let mut counts = Vec::new();
    for url in ch.all_nodes() {
        let node = eph.client(&url).await;
        let count: u64 = eventually(Duration::from_secs(10), "replication", || {
            let node = node.clone();
            let local = local.clone();
            let id = stored.id.to_string();
            async move {
                node.query(&format!("SELECT count() FROM {local} WHERE id = toUUID(?)"))
                    .bind(id)
                    .fetch_one::<u64>()
                    .await
                    .ok()
            }
        })
        .await;
        counts.push(count);
    }
    // Replication is asynchronous: wait until the second replica of the shard has it.
    let shard = if counts[0] + counts[1] > 0 { 0 } else { 2 };
    for url in &ch.all_nodes()[shard..shard + 2] {
        let node = eph.client(url).await;
        let id = stored.id.to_string();
        let local = local.clone();
        eventually(Duration::from_secs(10), "both replicas", || {
            let node = node.clone();
            let local = local.clone();
            let id = id.clone();
            async move {
                let n: u64 = node
                    .query(&format!("SELECT count() FROM {local} WHERE id = toUUID(?)"))
                    .bind(id)
                    .fetch_one()
                    .await
                    .ok()?;
                (n == 1).then_some(())
            }
        })
        .await;
    }
    let other = if shard == 0 { 2 } else { 0 };
    assert_eq!(
        counts[other] + counts[other + 1],
        0,
        "the other shard has it: {counts:?}"
    );

    let back: EventRow = client
        .query(&format!(
            "SELECT ?fields FROM {} WHERE id = toUUID(?)",
            ch.table
        ))
        .bind(stored.id.to_string())
        .fetch_one()
        .await
        .expect("read back");
    assert_eq!(
        back, stored,
        "every column, times to the millisecond, round-trips"
    );
    eph.cleanup().await;
}

#[tokio::test]
async fn migrate_twice_is_a_no_op() {
    let eph = Ephemeral::new(2).await;
    let client = eph.client(&eph.config.clickhouse.url).await;
    let tables = || async {
        client
            .query("SELECT name, engine FROM system.tables WHERE database = ? ORDER BY name")
            .bind(&eph.config.clickhouse.database)
            .fetch_all::<(String, String)>()
            .await
            .expect("tables")
    };
    let before = tables().await;
    assert_eq!(
        before,
        vec![
            ("events".to_owned(), "Distributed".to_owned()),
            (
                "events_local".to_owned(),
                "ReplicatedReplacingMergeTree".to_owned()
            ),
        ]
    );
    let again = ess_core::migrate::run(&eph.config)
        .await
        .expect("second migrate");
    assert!(
        again.created_topics.is_empty(),
        "{:?}",
        again.created_topics
    );
    assert_eq!(tables().await, before);
    eph.cleanup().await;
}
