//! A member frozen past the session timeout (SIGSTOP, as a VM pause or a long stall does)
//! while events flow: the group gives its partitions to the other member, which reconciles
//! and stores them; when the frozen one resumes it must write nothing it read before.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ess_testkit::{Ephemeral, eventually};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_member_frozen_past_the_session_timeout_writes_nothing_when_it_resumes() {
    init_logs();
    let eph = Ephemeral::new(4).await;
    let config = test_config(eph.config.clone());
    stop_merges(&config).await;
    // The member to freeze seals a batch only every 2 s, so whenever it freezes it holds rows
    // read but not yet inserted: the rows it would write on resuming.
    let mut frozen_config = config.clone();
    frozen_config.sink.batch_max_wait = Duration::from_secs(2);
    frozen_config.sink.batch_rows = 1_000_000;
    let frozen = ChildSink::start(&frozen_config, "frozen-member");
    let other = InProcess::start(&config).await;
    eventually(
        Duration::from_secs(60),
        "both members hold partitions",
        || async {
            let (status, metrics) = http_get(frozen.addr, "/metrics").await;
            let frozen_has =
                status == 200 && metric(&metrics, "ess_sink_assigned_partitions") > 0.0;
            let other_has = other.health().ready.load(Ordering::Relaxed)
                && other.health().assignments.load(Ordering::Relaxed) > 0;
            (frozen_has && other_has && http_get(frozen.addr, "/readyz").await.0 == 200)
                .then_some(())
        },
    )
    .await;
    let assignments_before = other.health().assignments.load(Ordering::Relaxed);

    const ROUNDS: u64 = 50;
    const PER_ROUND: u64 = 600;
    let stream = {
        let config = config.clone();
        tokio::spawn(async move {
            let producer = producer(&config);
            for round in 0..ROUNDS {
                produce(&config, &producer, PER_ROUND, round * PER_ROUND).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    wait_for_rows(&config, 3 * PER_ROUND, Duration::from_secs(60)).await;

    frozen.signal("STOP");
    // Past the 2 s session timeout: the group gives the frozen member's partitions away.
    eventually(
        Duration::from_secs(30),
        "the other member takes the frozen one's partitions",
        || async {
            (other.health().assignments.load(Ordering::Relaxed) > assignments_before
                && other.health().ready.load(Ordering::Relaxed))
            .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    frozen.signal("CONT");

    stream.await.expect("stream");
    let total = ROUNDS * PER_ROUND;
    wait_for_rows(&config, total, Duration::from_secs(120)).await;
    eventually(
        Duration::from_secs(60),
        "every offset committed",
        || async {
            let config = config.clone();
            let committed = tokio::task::spawn_blocking(move || committed_total(&config, 4))
                .await
                .ok()?;
            (committed == total as i64).then_some(())
        },
    )
    .await;
    let (_, metrics) = http_get(frozen.addr, "/metrics").await;
    assert!(
        metric(&metrics, "ess_sink_stalls_total") >= 1.0,
        "the resumed member noticed its pause"
    );
    assert!(frozen.stop().await, "the resumed member stops cleanly");
    other.stop().await.expect("stop");
    // Raw rows (merges are stopped): a duplicate would be a row of its own.
    assert_eq!(
        counts(&config).await,
        (total, total),
        "no row written twice"
    );
    eph.cleanup().await;
}
