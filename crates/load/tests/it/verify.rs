//! `ess verify` against the real cluster: rows inserted by the test stand in for the sinks.

use std::time::Duration;

use ess_core::schema::EventRow;
use ess_load::ids::{RunId, SeqSet};
use ess_load::plan::Model;
use ess_load::stats::{LatencyMs, LoadSummary};
use ess_load::{RawCount, RunRecord, Verifier};
use ess_testkit::Ephemeral;

fn record(run: RunId, accepted: &SeqSet, resent: u64) -> RunRecord {
    let summary = LoadSummary {
        run,
        target: "http://127.0.0.1:1".into(),
        model: Model::Closed,
        shape: "test".into(),
        batch: 1,
        started_ms: 0,
        duration_s: 1.0,
        requests: accepted.len(),
        requests_ok: accepted.len(),
        requests_failed: 0,
        events_sent: accepted.len(),
        unique_events: accepted.len(),
        events_accepted: accepted.len(),
        resent,
        rps: 0.0,
        events_per_s: 0.0,
        success_pct: 100.0,
        latency: LatencyMs::default(),
        corrected_for_coordinated_omission: false,
        outcomes: Default::default(),
        interrupted: false,
        timeline: vec![],
    };
    RunRecord::new(summary, accepted)
}

fn row(run: RunId, seq: u64, e2e_ms: i64) -> EventRow {
    let t = 1_764_000_000_000 + seq as i64;
    EventRow {
        id: run.event_id(seq),
        kind: "page_view".into(),
        source: run.to_string(),
        event_time: t,
        ingest_time: t + 1,
        store_time: t + 1 + e2e_ms,
        properties: "{}".into(),
        kafka_partition: 0,
        kafka_offset: seq as i64,
        ..EventRow::default()
    }
}

/// A second copy of event `seq`, written later (another block, so the replicated table does
/// not drop it as a repeated block).
fn copy_of(run: RunId, seq: u64) -> EventRow {
    let mut again = row(run, seq, 10);
    again.ingest_time += 1000;
    again.store_time += 1000;
    again
}

async fn insert(eph: &Ephemeral, rows: &[EventRow]) {
    let ch = &eph.config.clickhouse;
    let client = eph.client(&ch.url).await;
    let mut insert = client
        .with_setting("insert_distributed_sync", "1")
        .insert::<EventRow>(&ch.table)
        .await
        .expect("insert");
    for r in rows {
        insert.write(r).await.expect("write");
    }
    insert.end().await.expect("end");
}

#[tokio::test]
async fn a_complete_run_passes_with_exact_latency_and_consistent_replicas() {
    let eph = Ephemeral::new(1).await;
    let run = RunId::random();
    let mut accepted = SeqSet::new();
    accepted.insert_range(0, 1000);
    // e2e = seq % 100 ms: median 49.5 → exact quantile 49 or 50.
    let verifier = Verifier::connect(&eph.config).await.unwrap();
    verifier.stop_merges().await.unwrap();
    let rows: Vec<EventRow> = (0..1000).map(|s| row(run, s, (s % 100) as i64)).collect();
    insert(&eph, &rows).await;
    // Another run's rows in the same table must not count.
    let other = RunId::random();
    insert(&eph, &[row(other, 0, 5), row(other, 1, 5)]).await;

    let v = verifier
        .verify(
            &record(run, &accepted, 0),
            Duration::from_secs(30),
            10,
            RawCount::MergesStopped,
        )
        .await
        .unwrap();
    assert!(v.ok, "{}", v.render());
    assert_eq!(
        (v.accepted, v.stored_rows, v.unique_ids),
        (1000, 1000, 1000)
    );
    assert_eq!((v.lost, v.duplicates, v.foreign_ids), (0, 0, 0));
    assert!(
        (49.0..=50.0).contains(&v.e2e_ms.p50),
        "p50 {}",
        v.e2e_ms.p50
    );
    assert_eq!(v.e2e_ms.max, 99.0);
    assert_eq!(v.e2e_ms.min, 0.0);
    assert_eq!(v.nodes.len(), eph.config.clickhouse.all_nodes().len());
    assert!(v.replicas_consistent);
    assert_eq!(v.shard_sum, 1000);
    // Both shards got some of the run.
    assert!(v.nodes.iter().filter(|n| n.rows > 0).count() >= 2);
    eph.cleanup().await;
}

#[tokio::test]
async fn lost_and_duplicated_events_fail_the_run_and_are_named() {
    let eph = Ephemeral::new(1).await;
    let run = RunId::random();
    let mut accepted = SeqSet::new();
    accepted.insert_range(0, 100);
    // Merges stopped: the copy below stays a row of its own until it is counted.
    let verifier = Verifier::connect(&eph.config).await.unwrap();
    verifier.stop_merges().await.unwrap();
    let rows: Vec<EventRow> = (0..97).map(|s| row(run, s, 10)).collect();
    insert(&eph, &rows).await;
    insert(&eph, &[copy_of(run, 5)]).await;

    let v = verifier
        .verify(
            &record(run, &accepted, 0),
            Duration::from_secs(3),
            2,
            RawCount::MergesStopped,
        )
        .await
        .unwrap();
    assert!(!v.ok);
    assert_eq!(v.lost, 3);
    assert_eq!(v.lost_first.len(), 2);
    assert_eq!(v.lost_first[0].seq, 97);
    assert_eq!(v.lost_first[0].id, run.event_id(97));
    assert_eq!(v.stored_rows, 98);
    assert_eq!(v.unique_ids, 97);
    assert_eq!(v.duplicates, 1);
    assert_eq!(v.rows_final, 97, "FINAL collapses the copy");
    assert!(v.problems.iter().any(|p| p.contains("not stored")));
    assert!(v.problems.iter().any(|p| p.contains("duplicate")));
    assert_eq!(v.raw_count, RawCount::MergesStopped);
    assert!(v.render().contains("merges stopped"), "{}", v.render());
    eph.cleanup().await;
}

#[tokio::test]
async fn a_duplicate_merged_away_before_the_check_still_fails_the_run_when_sampled() {
    let eph = Ephemeral::new(1).await;
    let run = RunId::random();
    let mut accepted = SeqSet::new();
    accepted.insert_range(0, 50);
    // Merges held back only so that the sample below surely sees the copy.
    let verifier = Verifier::connect(&eph.config).await.unwrap();
    verifier.stop_merges().await.unwrap();
    let rows: Vec<EventRow> = (0..50).map(|s| row(run, s, 10)).collect();
    insert(&eph, &rows).await;
    insert(&eph, &[copy_of(run, 7)]).await;

    // A sample taken while the copy is there (on both replicas: a query may read either), as
    // the demo's sampler takes them.
    let mut sampled = RawCount::sampled();
    let (rows, unique) =
        ess_testkit::eventually(Duration::from_secs(30), "the copy replicated", || async {
            let nodes = verifier.node_counts(run).await.ok()?;
            (nodes.iter().map(|n| n.rows).sum::<u64>() == 102).then_some(())?;
            verifier.counts(run).await.ok()
        })
        .await;
    assert_eq!((rows, unique), (51, 50), "the copy is a row of its own");
    sampled.add(rows, unique);

    // Then the ReplacingMergeTree merges the copy away.
    verifier.start_merges().await.unwrap();
    let local = eph.migrated.schema.local_table();
    for url in eph.config.clickhouse.all_nodes() {
        eph.client(&url)
            .await
            .query(&format!("OPTIMIZE TABLE {local} FINAL"))
            .execute()
            .await
            .unwrap();
    }
    ess_testkit::eventually(Duration::from_secs(30), "the copy merged away", || async {
        let (rows, _) = verifier.counts(run).await.ok()?;
        (rows == 50).then_some(())
    })
    .await;

    let record = record(run, &accepted, 0);
    let v = verifier
        .verify(&record, Duration::from_secs(3), 2, sampled)
        .await
        .unwrap();
    assert_eq!(v.stored_rows, 50, "no copy left at the end");
    assert_eq!(v.duplicates, 1, "the sample saw it: {}", v.render());
    assert!(!v.ok);
    assert!(v.problems.iter().any(|p| p.contains("duplicate")));
    assert!(v.render().contains("merges ran"), "{}", v.render());

    // Counted only at the end, the same run looks clean: why the samples are needed.
    let late = verifier
        .verify(&record, Duration::ZERO, 2, RawCount::sampled())
        .await
        .unwrap();
    assert_eq!(late.duplicates, 0);
    eph.cleanup().await;
}
