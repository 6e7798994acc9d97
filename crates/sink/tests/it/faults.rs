//! ClickHouse failures on private stacks (each its own ZooKeeper, four servers and broker on
//! its own ports): a replica away, the whole cluster away, a replica frozen under load, a
//! node the fence cannot ask, quorum writes with a replica away.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ess_core::config::Config;

use crate::private::*;
use crate::support::*;

const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn replica_and_whole_cluster_outages_lose_nothing_and_keep_the_group() {
    let (stack, config, _down) = private_stack(24000, "sink-faults", 4).await;

    let producer = producer(&config);
    let sink = InProcess::start(&config).await;
    produce(&config, &producer, 5_000, 0).await;
    assert_eq!(
        wait_for_rows(&config, 5_000, Duration::from_secs(60)).await,
        (5_000, 5_000)
    );

    // One replica of shard 2 away while events keep coming.
    assert!(stack.stop_service("clickhouse-3").await.expect("stop"));
    produce(&config, &producer, 5_000, 5_000).await;
    tokio::time::sleep(OUTAGE).await;
    start_node(&stack, "clickhouse-3").await;
    assert_eq!(
        wait_for_rows(&config, 10_000, Duration::from_secs(90)).await,
        (10_000, 10_000)
    );

    // The whole cluster away.
    let names = [
        "clickhouse-1",
        "clickhouse-2",
        "clickhouse-3",
        "clickhouse-4",
    ];
    let stopped = futures::future::join_all(names.iter().map(|n| stack.stop_service(n))).await;
    for (name, stopped) in names.iter().zip(stopped) {
        assert!(stopped.expect("stop"), "{name} was running and stopped");
    }
    assert!(
        try_counts_on(&config, &config.clickhouse.url)
            .await
            .is_none(),
        "the cluster is down"
    );
    produce(&config, &producer, 5_000, 10_000).await;
    let beat_before = sink.health().polled_at.load(Ordering::Relaxed);
    tokio::time::sleep(OUTAGE).await;
    assert!(
        sink.health().polled_at.load(Ordering::Relaxed) > beat_before,
        "the poll loop kept going while the cluster was down"
    );
    for n in names {
        start_node(&stack, n).await;
    }
    assert_eq!(
        wait_for_rows(&config, 15_000, Duration::from_secs(120)).await,
        (15_000, 15_000)
    );
    replicas_settle(&config, 15_000, Duration::from_secs(60)).await;

    assert_eq!(
        sink.health().revocations.load(Ordering::Relaxed),
        0,
        "group membership kept: no partition was ever revoked"
    );
    assert_eq!(sink.health().assignments.load(Ordering::Relaxed), 1);
    sink.stop().await.expect("stop");
    assert_eq!(counts(&config).await, (15_000, 15_000));
    assert_eq!(committed_total(&config, 4), 15_000);
}

/// Produces rounds of `per_round` events every ~100 ms until `stop` is set; returns how many.
fn steady_load(
    config: &Config,
    per_round: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let config = config.clone();
    tokio::spawn(async move {
        let producer = producer(&config);
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) {
            produce(&config, &producer, per_round, sent).await;
            sent += per_round;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent
    })
}

#[tokio::test]
async fn a_frozen_replica_does_not_stop_its_shard_and_loses_nothing() {
    let (stack, mut config, _down) = private_stack(25000, "sink-freeze", 4).await;
    config.clickhouse.timeout = Duration::from_secs(2);
    let sink = InProcess::start(&config).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(&config, 500, stop.clone());
    wait_for_rows(&config, 2_000, Duration::from_secs(60)).await;

    // The rate before the freeze (printed for BENCHMARKS.md, not asserted).
    let stored = || async { rows_on(&config, 1).await + rows_on(&config, 4).await };
    let before = stored().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rate_before = (stored().await - before) as f64 / 5.0;

    // Replica 3 of shard 2 frozen: it accepts connections and answers nothing.
    let pid = pid_of(&stack, "clickhouse-3");
    signal_pid(pid, "STOP");
    let _thaw = Thaw(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (shard1, shard2) = (rows_on(&config, 1).await, rows_on(&config, 4).await);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (shard1_later, shard2_later) = (rows_on(&config, 1).await, rows_on(&config, 4).await);
    signal_pid(pid, "CONT");
    let rate_frozen = (shard1_later + shard2_later - shard1 - shard2) as f64 / 10.0;
    eprintln!(
        "stored rows/s: {rate_before:.0} before the freeze, {rate_frozen:.0} during it \
         (from its 5th to its 15th second)"
    );
    assert!(
        shard2_later > shard2 + 1_000,
        "shard 2 kept storing through its live replica while the other was frozen: \
         {shard2} → {shard2_later} rows in 10 s"
    );
    assert!(
        shard1_later > shard1 + 1_000,
        "shard 1 kept storing while a replica of shard 2 was frozen: {shard1} → {shard1_later}"
    );

    stop.store(true, Ordering::SeqCst);
    let total = load.await.expect("load");
    assert_eq!(
        wait_for_rows(&config, total, Duration::from_secs(90)).await,
        (total, total)
    );
    replicas_settle(&config, total, Duration::from_secs(60)).await;
    sink.stop().await.expect("stop");
    assert_eq!(
        counts(&config).await,
        (total, total),
        "raw rows, none twice"
    );
    assert_eq!(committed_total(&config, 4), total as i64);
}

#[tokio::test]
async fn the_fence_waits_for_a_node_it_cannot_ask_and_for_its_running_insert() {
    let (stack, mut config, _down) = private_stack(25500, "sink-fence", 1).await;
    config.clickhouse.timeout = Duration::from_secs(1);
    let producer = producer(&config);
    let (id, json) = event_json(0);
    produce_raw(&config, &producer, 0, &id.to_string(), &json).await;
    produce(&config, &producer, 99, 1).await;

    // An earlier owner's insert of the event at offset 0, still running on node 2 (shard 1)
    // under the sink's query id for partition 0: INSERT … SELECT that sleeps ~24 s.
    let event = ess_core::wire::WireEvent::from_json(&json).expect("json");
    let quote = |s: &str| s.replace('\\', "\\\\").replace('\'', "\\'");
    let sql = format!(
        "INSERT INTO {db}.{table} ({cols}) SELECT toUUID('{id}'), 'page_view', 'it', '', '', '', '', '{{}}', \
         toUInt64({e}), toUInt64({i}), toUInt64(1), '{props}', toInt32(0), toInt64(0) \
         FROM numbers(8) WHERE sleep(3) = 0 AND number = 0",
        db = config.clickhouse.database,
        table = config.clickhouse.local_table(),
        cols = ess_sink::encode::COLUMNS,
        e = event.timestamp.0,
        i = event.ingest_time.0,
        props = quote(event.properties.get()),
    );
    let query_id = format!("ess:{}:,0,:1-1:0-1", config.kafka.topic);
    let node2 = ess_core::clickhouse::client(&config.clickhouse, &config.clickhouse.nodes[1])
        .with_validation(false);
    let earlier = {
        let client = node2
            .clone()
            .with_setting("query_id", query_id.clone())
            .with_setting("max_block_size", "1");
        tokio::spawn(async move { client.query(&sql).execute().await })
    };
    ess_testkit::eventually(Duration::from_secs(10), "the earlier insert runs", || {
        let node2 = node2.clone();
        let query_id = query_id.clone();
        async move {
            let n: u64 = node2
                .query("SELECT count() FROM system.processes WHERE query_id = ?")
                .bind(query_id)
                .fetch_one()
                .await
                .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;

    // Node 2 frozen while the new owner starts, joins and fences: it cannot be asked.
    let pid = pid_of(&stack, "clickhouse-2");
    signal_pid(pid, "STOP");
    let thaw = Thaw(pid);
    let sink = InProcess::start(&config).await;
    ess_testkit::eventually(Duration::from_secs(60), "an assignment", || async {
        (sink.health().assignments.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    // The fence runs now and cannot ask node 2; the sink is not ready while it waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        http_get(sink.addr(), "/readyz").await.0,
        503,
        "not ready while fencing"
    );
    assert_eq!(
        http_get(sink.addr(), "/healthz").await.0,
        200,
        "alive while fencing"
    );
    signal_pid(pid, "CONT");
    drop(thaw);

    earlier
        .await
        .expect("task")
        .expect("the earlier insert finishes");
    assert_eq!(
        wait_for_rows(&config, 100, Duration::from_secs(90)).await,
        (100, 100)
    );
    replicas_settle(&config, 100, Duration::from_secs(60)).await;
    sink.stop().await.expect("stop");
    assert_eq!(
        counts(&config).await,
        (100, 100),
        "the event at offset 0 once"
    );
    assert_eq!(committed_total(&config, 1), 100);
}

#[tokio::test]
async fn with_insert_quorum_nothing_is_acknowledged_while_a_replica_is_away() {
    let (stack, mut off, _down) = private_stack(24500, "sink-quorum-off", 2).await;
    // Both databases exist before the replica goes (ON CLUSTER DDL waits for every host).
    let mut on = private_config(24500, "sink-quorum-on", 2).await;
    on.sink.insert_quorum = 2;
    // The stopped replica cannot tell the fence what it runs: each assignment waits this
    // long for it, then goes on without it.
    off.sink.reconcile_wait = Duration::from_secs(5);
    on.sink.reconcile_wait = Duration::from_secs(5);
    assert!(stack.stop_service("clickhouse-3").await.expect("stop"));
    let producer_off = producer(&off);
    let producer_on = producer(&on);

    // Off (the default): the live replica of shard 2 takes its rows.
    let sink = InProcess::start(&off).await;
    produce(&off, &producer_off, 2_000, 0).await;
    assert_eq!(
        wait_for_rows(&off, 2_000, Duration::from_secs(60)).await,
        (2_000, 2_000)
    );
    sink.stop().await.expect("stop");
    assert_eq!(committed_total(&off, 2), 2_000);

    // On: shard 2's parts are refused while only one replica is up, so no batch is
    // acknowledged and no offset committed.
    let sink = InProcess::start(&on).await;
    produce(&on, &producer_on, 2_000, 0).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(rows_on(&on, 4).await, 0, "no shard-2 row on a lone replica");
    assert!(
        rows_on(&on, 1).await > 0,
        "shard 1 has both replicas: stored"
    );
    assert_eq!(
        committed_total(&on, 2),
        0,
        "nothing acknowledged, nothing committed"
    );

    start_node(&stack, "clickhouse-3").await;
    assert_eq!(
        wait_for_rows(&on, 2_000, Duration::from_secs(90)).await,
        (2_000, 2_000)
    );
    replicas_settle(&on, 2_000, Duration::from_secs(60)).await;
    sink.stop().await.expect("stop");
    assert_eq!(counts(&on).await, (2_000, 2_000));
    assert_eq!(committed_total(&on, 2), 2_000);
}
