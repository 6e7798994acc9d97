//! Sinks join and leave a group while events stream in: every event stored exactly once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ess_testkit::{Ephemeral, eventually};

use crate::support::*;

#[tokio::test]
async fn sinks_joining_and_leaving_mid_stream_store_every_event_once() {
    let eph = Ephemeral::new(8).await;
    let config = test_config(eph.config.clone());
    stop_merges(&config).await;
    let producer = producer(&config);
    const ROUNDS: u64 = 12;
    const PER_ROUND: u64 = 5_000;

    let first = InProcess::start(&config).await;
    let second = InProcess::start(&config).await;
    // A stream in the background, one round every so often.
    let stream = {
        let config = config.clone();
        tokio::spawn(async move {
            let producer = crate::support::producer(&config);
            for round in 0..ROUNDS {
                produce(&config, &producer, PER_ROUND, round * PER_ROUND).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    drop(producer);

    // A third sink joins once rows flow…
    wait_for_rows(&config, 2 * PER_ROUND, Duration::from_secs(60)).await;
    let third = InProcess::start(&config).await;
    eventually(
        Duration::from_secs(30),
        "the third sink gets partitions",
        || async {
            (third.health().ready.load(Ordering::Relaxed)
                && third.health().assigned.load(Ordering::Relaxed) > 0)
                .then_some(())
        },
    )
    .await;
    // …and the first leaves while the stream goes on.
    let stored_before_leave = counts(&config).await.0;
    first.stop().await.expect("first sink stops cleanly");
    assert!(stored_before_leave < ROUNDS * PER_ROUND, "left mid-stream");

    stream.await.expect("stream");
    let total = ROUNDS * PER_ROUND;
    assert_eq!(
        wait_for_rows(&config, total, Duration::from_secs(90)).await,
        (total, total)
    );
    second.stop().await.expect("stop");
    third.stop().await.expect("stop");
    // Raw rows (merges are stopped): a duplicate written at a rebalance is still a row.
    assert_eq!(counts(&config).await, (total, total), "no duplicates");
    assert_eq!(committed_total(&config, 8), total as i64);
    eph.cleanup().await;
}
