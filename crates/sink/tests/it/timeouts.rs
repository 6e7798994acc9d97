//! A sink whose insert hangs (one replica frozen with the request unread, the sink willing to
//! wait minutes for an answer): a rebalance waits for it at most `sink.revoke_timeout`,
//! SIGTERM at most `sink.shutdown_timeout`, and the partitions' next owner stores every event
//! once.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ess_core::config::Config;
use ess_stack::Stack;
use ess_testkit::eventually;

use crate::private::*;
use crate::support::*;

/// `sink.revoke_timeout` and `sink.shutdown_timeout` of the sink whose insert hangs.
const TIMEOUT: Duration = Duration::from_secs(3);
/// How long that sink waits for an insert's answer: far past both.
const INSERT_WAIT: Duration = Duration::from_secs(120);

/// A sink in a process of its own, holding an insert that hangs on replica 3 (shard 2),
/// frozen with the request unread; the guard thaws the replica. Returns the events produced.
async fn a_sink_with_a_hanging_insert(
    stack: &Stack,
    config: &Config,
    name: &str,
) -> (ChildSink, Thaw, u64) {
    let mut hanging = config.clone();
    hanging.clickhouse.timeout = INSERT_WAIT;
    hanging.sink.revoke_timeout = TIMEOUT;
    hanging.sink.shutdown_timeout = TIMEOUT;
    let sink = ChildSink::start(&hanging, name);
    let producer = producer(config);
    produce(config, &producer, 1_000, 0).await;
    wait_for_rows(config, 1_000, Duration::from_secs(60)).await;

    let frozen = freeze(stack, "clickhouse-3");
    // Shard 2's parts take turns over its replicas: within a few batches one goes to the
    // frozen replica, where it waits unread.
    let port = stack.config().clickhouse_http_port + 2;
    let mut sent = 1_000;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !unread_bytes_at(port) {
        assert!(
            Instant::now() < deadline,
            "no insert reached the frozen replica"
        );
        produce(config, &producer, 200, sent).await;
        sent += 200;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (sink, frozen, sent)
}

/// The next owner of the partitions: its own process (so its counts are its own), waiting
/// for ClickHouse at most 2 s per request.
fn next_owner(config: &Config) -> Config {
    let mut next = config.clone();
    next.clickhouse.timeout = Duration::from_secs(2);
    next
}

#[tokio::test]
async fn sigterm_with_an_insert_hanging_exits_within_shutdown_timeout_and_nothing_is_stored_twice()
{
    let (stack, config, _down) = private_stack(24010, "sink-shutdown", 2).await;
    let (sink, frozen, sent) = a_sink_with_a_hanging_insert(&stack, &config, "shutdown").await;

    let exit = sink.terminate().await;
    eprintln!("SIGTERM to exit with an insert hanging: {:?}", exit.took);
    assert!(exit.success, "exit status 0, as documented: {exit:?}");
    assert!(
        exit.took < TIMEOUT + Duration::from_secs(10),
        "gone within shutdown_timeout ({TIMEOUT:?}) and a margin, not when the insert ends: \
         {exit:?}"
    );

    // The replica thaws (and may now run the request it held); the next owner fences,
    // reconciles and stores the rest.
    drop(frozen);
    let next = InProcess::start(&next_owner(&config)).await;
    assert_eq!(
        wait_for_rows(&config, sent, Duration::from_secs(90)).await,
        (sent, sent)
    );
    // The rows may be the thawed replica's doing: the next owner must also have read past
    // them.
    wait_for_committed(&config, 2, sent, Duration::from_secs(90)).await;
    replicas_settle(&config, sent, Duration::from_secs(60)).await;
    next.stop().await.expect("stop");
    assert_eq!(counts(&config).await, (sent, sent), "raw rows, none twice");
}

#[tokio::test]
async fn a_rebalance_waits_for_a_hanging_insert_at_most_revoke_timeout() {
    let (stack, config, _down) = private_stack(25010, "sink-revoke", 4).await;
    let (sink, frozen, sent) = a_sink_with_a_hanging_insert(&stack, &config, "revoke").await;

    // A second member joins: the first must let its partitions go within revoke_timeout,
    // although its insert would wait minutes more.
    let joined = Instant::now();
    let next = InProcess::start(&next_owner(&config)).await;
    eventually(
        Duration::from_secs(40),
        "the joining member gets partitions",
        || async { (next.health().assigned.load(Ordering::Relaxed) > 0).then_some(()) },
    )
    .await;
    eprintln!(
        "join to assignment with an insert hanging: {:?}",
        joined.elapsed()
    );
    let (status, metrics) = http_get(sink.addr, "/metrics").await;
    assert_eq!(status, 200, "the first member still runs");
    assert_eq!(
        metric(&metrics, "ess_sink_revoke_timeouts_total"),
        1.0,
        "it gave up waiting once"
    );
    eventually(
        Duration::from_secs(30),
        "the first member holds partitions of the new assignment",
        || async {
            let (_, metrics) = http_get(sink.addr, "/metrics").await;
            (metric(&metrics, "ess_sink_assigned_partitions") > 0.0).then_some(())
        },
    )
    .await;

    // Both wait in the fence for the frozen replica; thawed, it finishes or runs the
    // abandoned insert, and every event ends up stored once.
    drop(frozen);
    assert_eq!(
        wait_for_rows(&config, sent, Duration::from_secs(120)).await,
        (sent, sent)
    );
    wait_for_committed(&config, 4, sent, Duration::from_secs(90)).await;
    replicas_settle(&config, sent, Duration::from_secs(60)).await;
    assert!(
        sink.terminate().await.success,
        "the first member stops cleanly"
    );
    next.stop().await.expect("stop");
    assert_eq!(counts(&config).await, (sent, sent), "raw rows, none twice");
}
