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

/// Inserts `row` through the Distributed `table`, which sends it on to its shard at once.
async fn insert_sync(client: &clickhouse::Client, table: &str, row: &EventRow) {
    let mut insert = client
        .clone()
        .with_setting("insert_distributed_sync", "1")
        .insert::<EventRow>(table)
        .await
        .expect("insert");
    insert.write(row).await.expect("write");
    insert.end().await.expect("end");
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
    insert_sync(&client, &ch.table, &stored).await;

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

/// SQL for a time column's value from epoch milliseconds, for the server's flavor.
fn time_sql(flavor: ess_core::clickhouse::Flavor, ms: &str) -> String {
    match flavor {
        ess_core::clickhouse::Flavor::Legacy => ms.to_owned(),
        ess_core::clickhouse::Flavor::Modern => format!("fromUnixTimestamp64Milli(toInt64({ms}))"),
    }
}

/// Generates `n` rows on the server: `type{number % 5}`, `tenant{number / 5 % 4}`, event times
/// spread evenly over the 30 days from 2025-11-01.
fn generate_sql(eph: &Ephemeral, table: &str, n: u64) -> String {
    let flavor = eph.migrated.schema.flavor;
    let t = time_sql(
        flavor,
        &format!("{DAY0} + intDiv(number * {}, {n})", 30 * DAY_MS),
    );
    format!(
        "INSERT INTO {table} (id, type, source, event_time, ingest_time, store_time, \
         properties, context, kafka_partition, kafka_offset) \
         SELECT generateUUIDv4(), concat('type', toString(number % 5)), \
         concat('tenant', toString(intDiv(number, 5) % 4)), {t}, {t}, {t}, '{{}}', '{{}}', 0, \
         toInt64(number) FROM system.numbers LIMIT {n}"
    )
}

const DAY0: i64 = 1_761_955_200_000; // 2025-11-01T00:00:00Z
const DAY_MS: i64 = 86_400_000;

#[tokio::test]
async fn one_day_of_one_source_and_type_reads_a_small_share_of_thirty_days() {
    let eph = Ephemeral::new(1).await;
    let ch = &eph.config.clickhouse;
    let client = eph
        .client(&ch.url)
        .await
        .with_setting("insert_distributed_sync", "1");
    const N: u64 = 1_000_000;
    // One block, so each shard gets one part, as a merged table has (small fresh parts each
    // cost at least a granule per query until merged).
    client
        .clone()
        .with_setting("max_block_size", "1048576")
        .query(&generate_sql(&eph, &ch.table, N))
        .execute()
        .await
        .expect("generate rows");
    // Every replica has fetched the rows (the query may go to either).
    let local = eph.migrated.schema.local_table();
    for url in ch.all_nodes() {
        run_on(&eph, &url, &format!("SYSTEM SYNC REPLICA {local}")).await;
    }
    // The rows the query must count: tenant1, type2, 2025-11-15.
    let expected = (0..N)
        .filter(|&i| {
            let t = DAY0 + (i as i64 * 30 * DAY_MS) / N as i64;
            i % 5 == 2 && (i / 5) % 4 == 1 && (t - DAY0) / DAY_MS == 14
        })
        .count() as u64;
    let query_id = ess_testkit::unique("pruning");
    // Every shard answers as a remote query, so each one's work is in its own query log.
    let count: u64 = client
        .clone()
        .with_setting("log_queries", "1")
        .with_setting("prefer_localhost_replica", "0")
        .with_setting("query_id", &query_id)
        .query(&format!(
            "SELECT count() FROM {} WHERE source = 'tenant1' AND type = 'type2' \
             AND event_date = '2025-11-15'",
            ch.table
        ))
        .fetch_one()
        .await
        .expect("count");
    assert_eq!(count, expected);
    let mut read = 0u64;
    for url in ch.all_nodes() {
        let node = eph.client(&url).await;
        // A replica the Distributed query did not use may not have logged anything yet, and
        // its `system.query_log` exists only after the first logged query is flushed.
        node.clone()
            .with_setting("log_queries", "1")
            .query("SELECT 1")
            .execute()
            .await
            .expect("a logged query");
        run_on(&eph, &url, "SYSTEM FLUSH LOGS").await;
        let rows: u64 = node
            .query(
                "SELECT sum(read_rows) FROM system.query_log WHERE initial_query_id = ? \
                 AND is_initial_query = 0 AND type = 2",
            )
            .bind(&query_id)
            .fetch_one()
            .await
            .expect("query log");
        read += rows;
    }
    assert!(read > 0, "the shards' queries are in the query log");
    assert!(
        read * 10 <= N,
        "a one-day, one-source, one-type count read {read} of {N} rows"
    );
    eph.cleanup().await;
}

#[tokio::test]
async fn one_id_from_two_sources_is_two_rows_that_survive_a_final_merge() {
    let eph = Ephemeral::new(1).await;
    let ch = &eph.config.clickhouse;
    let client = eph.client(&ch.url).await;
    let a = EventRow {
        source: "key-a".into(),
        ..row(0)
    };
    let b = EventRow {
        source: "key-b".into(),
        ingest_time: a.ingest_time + 1,
        properties: r#"{"by":"b"}"#.into(),
        ..a.clone()
    };
    for r in [&a, &b] {
        insert_sync(&client, &ch.table, r).await;
    }
    // The nodes of the shard holding the id (by their `shard` macro), each with both rows.
    let local = eph.migrated.schema.local_table();
    let id = a.id.to_string();
    let mut by_shard: Vec<(String, String, u64)> = Vec::new();
    for url in ch.all_nodes() {
        let node = eph.client(&url).await;
        let shard: String = node
            .query("SELECT substitution FROM system.macros WHERE macro = 'shard'")
            .fetch_one()
            .await
            .expect("shard macro");
        let n = count_on(&eph, &url, &local, &id).await.expect("count");
        by_shard.push((url, shard, n));
    }
    let holder = by_shard
        .iter()
        .find(|(_, _, n)| *n > 0)
        .map(|(_, s, _)| s.clone())
        .expect("a node holds the rows");
    let replicas: Vec<String> = by_shard
        .iter()
        .filter(|(_, s, _)| *s == holder)
        .map(|(u, _, _)| u.clone())
        .collect();
    assert_eq!(replicas.len(), 2);
    for url in &replicas {
        eventually(
            Duration::from_secs(10),
            "both rows on both replicas",
            || async { (count_on(&eph, url, &local, &id).await? == 2).then_some(()) },
        )
        .await;
    }
    for url in &replicas {
        run_on(&eph, url, &format!("OPTIMIZE TABLE {local} FINAL")).await;
    }
    let parts_sql = format!(
        "SELECT count() FROM system.parts WHERE database = currentDatabase() \
         AND table = '{local}' AND active"
    );
    for url in &replicas {
        let node = eph.client(url).await;
        let rows = eventually(Duration::from_secs(20), "one merged part", || async {
            let parts: u64 = node.query(&parts_sql).fetch_one().await.ok()?;
            let rows = count_on(&eph, url, &local, &id).await?;
            (parts == 1).then_some(rows)
        })
        .await;
        assert_eq!(
            rows, 2,
            "{url}: after the final merge both tenants' rows remain"
        );
    }
    let rows: Vec<(String, String)> = client
        .query(&format!(
            "SELECT source, properties FROM {} WHERE id = toUUID(?) ORDER BY source",
            ch.table
        ))
        .bind(a.id.to_string())
        .fetch_all()
        .await
        .expect("read");
    assert_eq!(
        rows,
        vec![
            ("key-a".to_owned(), a.properties.clone()),
            ("key-b".to_owned(), b.properties.clone())
        ],
        "neither tenant's row replaced the other's"
    );
    eph.cleanup().await;
}

/// The tables as ess created them before layout 2 (`ORDER BY id`, no identity columns).
fn first_layout(db: &str) -> [String; 2] {
    [
        format!(
            "CREATE TABLE {db}.events_local ON CLUSTER ess (id UUID, type String, source String, \
             event_time UInt64, ingest_time UInt64, store_time UInt64, properties String, \
             kafka_partition Int32, kafka_offset Int64) ENGINE = \
             ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{db}/events_local', \
             '{{replica}}', ingest_time) PARTITION BY toYYYYMM(toDateTime(intDiv(event_time, \
             1000))) ORDER BY id"
        ),
        format!(
            "CREATE TABLE {db}.events ON CLUSTER ess AS {db}.events_local \
             ENGINE = Distributed(ess, {db}, events_local, cityHash64(toString(id)))"
        ),
    ]
}

async fn per_source(client: &clickhouse::Client, table: &str) -> Vec<(String, u64)> {
    client
        .query(&format!(
            "SELECT source, count() FROM {table} GROUP BY source ORDER BY source"
        ))
        .fetch_all()
        .await
        .expect("count per source")
}

/// Runs `sql` on `url` as the test's database user.
async fn run_on(eph: &Ephemeral, url: &str, sql: &str) {
    eph.client(url)
        .await
        .query(sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{sql} on {url}: {e}"));
}

// The old table's rows are written on the second replica of each shard while the first
// replicas (where the copy runs) fetch nothing: a replica behind its shard, as one is for a
// moment after every insert. `ess migrate` must not copy from it before it has caught up.
#[tokio::test]
async fn migrate_moves_the_first_layout_with_every_row_then_sinks_write_and_again_is_a_no_op() {
    let eph = Ephemeral::new(2).await;
    let ch = &eph.config.clickhouse;
    let nodes = ch.all_nodes();
    if eph.migrated.schema.flavor != ess_core::clickhouse::Flavor::Legacy
        || ch.cluster != "ess"
        || nodes.len() != 4
    {
        eprintln!("skipped: the first layout here is 18.16's on the 2x2 `ess` cluster");
        return eph.cleanup().await;
    }
    let db = &ch.database;
    let client = eph.client(&ch.url).await;
    for table in ["events", "events_local"] {
        run_on(
            &eph,
            &ch.url,
            &format!("DROP TABLE {db}.{table} ON CLUSTER ess"),
        )
        .await;
    }
    for sql in first_layout(db) {
        run_on(&eph, &ch.url, &sql).await;
    }
    // Nodes 1 and 2 are shard 1, nodes 3 and 4 shard 2; the copy runs on nodes 1 and 3.
    let (behind, ahead) = ([&nodes[0], &nodes[2]], [&nodes[1], &nodes[3]]);
    for url in behind {
        run_on(&eph, url, &format!("SYSTEM STOP FETCHES {db}.events_local")).await;
    }
    // 30,001 rows, tenant0..2 by `number % 3`: half on each shard's second replica.
    for (url, range) in ahead.iter().zip(["0, 15000", "15000, 15001"]) {
        run_on(
            &eph,
            url,
            &format!(
                "INSERT INTO {db}.events_local SELECT generateUUIDv4(), 'view', \
                 concat('tenant', toString(number % 3)), {DAY0} + number, {DAY0} + number, \
                 {DAY0} + number, '{{\"n\":1}}', 0, toInt64(number) FROM system.numbers \
                 LIMIT {range}"
            ),
        )
        .await;
    }
    let before: Vec<(String, u64)> = [
        ("tenant0", 10_001),
        ("tenant1", 10_000),
        ("tenant2", 10_000),
    ]
    .map(|(s, n)| (s.to_owned(), n))
    .to_vec();
    // The lagging replicas fetch again once migrate waits for them (a `SYNC REPLICA` of the
    // old table runs on one of them) or once it has returned without waiting.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let catch_up = {
        let (done, eph_config) = (done.clone(), eph.config.clone());
        let behind: Vec<String> = behind.iter().map(|u| u.to_string()).collect();
        let db = db.clone();
        tokio::spawn(async move {
            let ch = &eph_config.clickhouse;
            let sql = format!(
                "SELECT count() FROM system.processes \
                 WHERE query LIKE 'SYSTEM SYNC REPLICA {db}.events_local%'"
            );
            loop {
                let mut waiting = 0u64;
                for url in &behind {
                    let (node, _) = ess_core::clickhouse::connect(ch, url).await.expect("node");
                    waiting += node.query(&sql).fetch_one::<u64>().await.unwrap_or(0);
                }
                if waiting > 0 || done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for url in &behind {
                let (node, _) = ess_core::clickhouse::connect(ch, url).await.expect("node");
                node.query(&format!("SYSTEM START FETCHES {db}.events_local"))
                    .execute()
                    .await
                    .expect("start fetches");
            }
        })
    };

    let plan = ess_core::migrate::plan(&eph.config).await.expect("plan");
    assert!(matches!(plan.found, ess_core::migrate::Found::First { .. }));
    let migrated = ess_core::migrate::run(&eph.config).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    catch_up.await.expect("fetches restarted");
    let migrated = migrated.expect("migrate");
    assert_eq!(migrated.steps, plan.steps, "--print shows what is done");
    let key: String = client
        .query("SELECT sorting_key FROM system.tables WHERE database = ? AND name = 'events_local'")
        .bind(db)
        .fetch_one()
        .await
        .expect("sorting key");
    assert_eq!(key, ess_core::schema::SORT_KEY);
    // As soon as migrate returns, every row is in the new table on every replica and counted
    // by the Distributed table on every node.
    let per_shard = |tenant0: u64| {
        [("tenant0", tenant0), ("tenant1", 5_000), ("tenant2", 5_000)]
            .map(|(s, n)| (s.to_owned(), n))
            .to_vec()
    };
    for (i, url) in nodes.iter().enumerate() {
        let node = eph.client(url).await;
        let distributed = per_source(&node, &format!("{db}.events")).await;
        assert_eq!(
            distributed, before,
            "rows per source through events on {url}"
        );
        let local = per_source(&node, &format!("{db}.events_local")).await;
        let shard = if i < 2 {
            per_shard(5_000)
        } else {
            per_shard(5_001)
        };
        assert_eq!(local, shard, "rows per source in events_local on {url}");
    }
    let kept: u64 = client
        .query("SELECT count() FROM system.tables WHERE database = ? AND name = 'events_local_v1'")
        .bind(db)
        .fetch_one()
        .await
        .expect("kept table");
    assert_eq!(kept, 1, "the old table is kept until dropped by hand");

    // A sink writes into the new table.
    let mut config = eph.config.clone();
    config.sink.session_timeout_ms = 2000;
    config.sink.heartbeat_interval_ms = 500;
    config.sink.batch_max_wait = Duration::from_millis(100);
    config.sink.listen = "127.0.0.1:0".into();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sink = tokio::spawn(ess_sink::run(config, async {
        let _ = stopped.await;
    }));
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &eph.config.kafka.brokers)
        .create()
        .expect("producer");
    crate::sink::produce(&producer, &eph.config.kafka.topic, 100).await;
    let total: u64 = before.iter().map(|(_, n)| n).sum();
    eventually(Duration::from_secs(60), "the sink's rows", || {
        let client = client.clone();
        let table = format!("{db}.events");
        async move {
            let n: u64 = client
                .query(&format!("SELECT count() FROM {table}"))
                .fetch_one()
                .await
                .ok()?;
            (n == total + 100).then_some(())
        }
    })
    .await;
    let _ = stop.send(());
    sink.await.expect("sink task").expect("sink stops cleanly");

    let again = ess_core::migrate::run(&eph.config).await.expect("again");
    assert!(matches!(
        again.found,
        ess_core::migrate::Found::Current { .. }
    ));
    assert!(again.steps.is_empty(), "{:?}", again.steps);
    eph.cleanup().await;
}

#[tokio::test]
async fn a_ttl_on_a_server_without_ttl_is_refused_naming_the_key() {
    let mut eph = Ephemeral::new(1).await;
    if eph.migrated.schema.flavor != ess_core::clickhouse::Flavor::Legacy {
        return eph.cleanup().await;
    }
    eph.config.clickhouse.ttl = Some(Duration::from_secs(86_400));
    let err = ess_core::migrate::run(&eph.config).await.unwrap_err();
    assert!(err.to_string().contains("`clickhouse.ttl`"), "{err}");
    eph.cleanup().await;
}
