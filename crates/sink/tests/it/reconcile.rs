//! Reconciliation while a replica does not answer: the new owner of a partition waits
//! `sink.reconcile_wait` for it, paused, then goes on with the replicas that answered, and the
//! rows the live replica holds are not written again.

use std::time::{Duration, Instant};

use ess_testkit::eventually;

use crate::private::*;
use crate::support::*;

/// `sink.reconcile_wait` of the new owner.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_frozen_replica_holds_reconciliation_for_reconcile_wait_then_nothing_is_stored_twice() {
    let (stack, config, _down) = private_stack(24510, "sink-reconcile", 2).await;
    let producer = producer(&config);
    let first = InProcess::start(&config).await;
    produce(&config, &producer, 2_000, 0).await;
    wait_for_rows(&config, 2_000, Duration::from_secs(60)).await;
    // Both replicas of each shard hold every row before one of shard 2 goes.
    replicas_settle(&config, 2_000, Duration::from_secs(60)).await;
    first.stop().await.expect("stop");

    // A group with no committed offset reconciles from offset 0: the 2,000 rows stored must
    // all be found — shard 2's on its live replica alone — and only the 1,000 new ones stored.
    produce(&config, &producer, 1_000, 2_000).await;
    let total = 3_000;
    let mut next = config.clone();
    next.sink.group_id = format!("{}.next", config.sink.group_id);
    next.sink.reconcile_wait = WAIT;
    next.clickhouse.timeout = Duration::from_secs(2);
    let frozen = freeze(&stack, "clickhouse-3");
    let sink = ChildSink::start(&next, "reconcile-frozen");
    eventually(Duration::from_secs(60), "an assignment", || async {
        let (_, metrics) = http_get(sink.addr, "/metrics").await;
        (metric(&metrics, "ess_sink_assigned_partitions") > 0.0).then_some(())
    })
    .await;
    let assigned = Instant::now();

    // Stored rows, counted on the live replica of each shard (1 and 4).
    let live = || async { rows_on(&next, 1).await + rows_on(&next, 4).await };
    tokio::time::sleep(WAIT - Duration::from_secs(3)).await;
    assert_eq!(
        http_get(sink.addr, "/readyz").await.0,
        503,
        "not ready while the fence waits for the frozen replica"
    );
    assert_eq!(live().await, 2_000, "nothing read while reconciling");

    // Every new event stored, the replica still frozen.
    wait_for_committed(&next, 2, total, Duration::from_secs(60)).await;
    eprintln!(
        "assignment to every offset committed: {:?} (reconcile_wait {WAIT:?})",
        assigned.elapsed()
    );
    assert!(assigned.elapsed() >= WAIT, "waited reconcile_wait first");
    eventually(
        Duration::from_secs(30),
        "shard 1's replicas agree",
        || async { (rows_on(&next, 1).await == rows_on(&next, 2).await).then_some(()) },
    )
    .await;
    assert_eq!(live().await, total, "raw rows: the 2,000 not stored again");
    let (_, metrics) = http_get(sink.addr, "/metrics").await;
    assert!(
        metric(&metrics, "ess_sink_fence_unreachable_total") >= 1.0,
        "the replica it went on without is counted"
    );

    drop(frozen);
    replicas_settle(&config, total, Duration::from_secs(60)).await;
    assert!(sink.stop().await, "stops cleanly");
    assert_eq!(counts(&config).await, (total, total));
}
