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
    }
}

/// Rows with `id` in the local table on `url`, if it answers.
async fn count_on(eph: &Ephemeral, url: &str, local: &str, id: &str) -> Option<u64> {
    eph.client(url)
        .await
        .query(&format!("SELECT count() FROM {local} WHERE id = toUUID(?)"))
        .bind(id)
        .fetch_one::<u64>()
        .await
        .ok()
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

    // The shard the Distributed table's key picks for this id, as the server computes it:
    // remainder 0 is shard 1 (nodes 1 and 2), remainder 1 shard 2 (nodes 3 and 4).
    let remainder: u8 = client
        .query(&format!(
            "SELECT {} % 2 FROM (SELECT toUUID(?) AS id)",
            ess_core::schema::SHARDING_KEY
        ))
        .bind(stored.id.to_string())
        .fetch_one()
        .await
        .expect("the sharding key's value");
    let nodes = ch.all_nodes();
    let shard = remainder as usize * 2;
    let local = eph.migrated.schema.local_table();
    let id = stored.id.to_string();
    // Replication is asynchronous: wait until both replicas of the shard have it.
    for url in &nodes[shard..shard + 2] {
        eventually(Duration::from_secs(10), "both replicas", || async {
            (count_on(&eph, url, &local, &id).await? == 1).then_some(())
        })
        .await;
    }
    let other = 2 - shard;
    for url in &nodes[other..other + 2] {
        assert_eq!(
            count_on(&eph, url, &local, &id).await,
            Some(0),
            "the other shard ({url}) has it"
        );
    }

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
