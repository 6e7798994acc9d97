//! `ess verify` against the real cluster: rows inserted by the test stand in for the sinks.

use std::time::Duration;

use ess_core::schema::EventRow;
use ess_load::ids::{RunId, SeqSet};
use ess_load::plan::Model;
use ess_load::stats::{LatencyMs, LoadSummary};
use ess_load::{RunRecord, Verifier};
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
    let rows: Vec<EventRow> = (0..1000).map(|s| row(run, s, (s % 100) as i64)).collect();
    insert(&eph, &rows).await;
    // Another run's rows in the same table must not count.
    let other = RunId::random();
    insert(&eph, &[row(other, 0, 5), row(other, 1, 5)]).await;

    let verifier = Verifier::connect(&eph.config).await.unwrap();
    let v = verifier
        .verify(&record(run, &accepted, 0), Duration::from_secs(30), 10)
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
    let rows: Vec<EventRow> = (0..97).map(|s| row(run, s, 10)).collect();
    insert(&eph, &rows).await;
    // A second copy of event 5, written later (another block, so not deduplicated as a block).
    let mut again = row(run, 5, 10);
    again.ingest_time += 1000;
    again.store_time += 1000;
    insert(&eph, &[again]).await;

    let verifier = Verifier::connect(&eph.config).await.unwrap();
    let v = verifier
        .verify(&record(run, &accepted, 0), Duration::from_secs(3), 2)
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
    eph.cleanup().await;
}
