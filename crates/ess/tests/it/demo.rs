//! `ess demo` in its CI size: the whole pipeline (ingest, two sinks, load, verify, report) on
//! the running stack, in a database, topic and consumer group of the test's own.

use std::process::Command;
use std::time::{Duration, Instant};

use ess_testkit::Ephemeral;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_stores_every_event_once_and_writes_the_report() {
    let eph = Ephemeral::new(4).await;
    let state = tempfile::tempdir().expect("temp dir");
    let run = format!("{:012x}", rand_run());
    let c = &eph.config;
    let sets = [
        format!("clickhouse.database={}", c.clickhouse.database),
        format!("kafka.topic={}", c.kafka.topic),
        format!("kafka.dlq_topic={}", c.kafka.dlq_topic),
        format!("kafka.partitions={}", c.kafka.partitions),
        format!("sink.group_id={}", c.sink.group_id),
        "sink.session_timeout_ms=3000".to_owned(),
        "sink.heartbeat_interval_ms=500".to_owned(),
        format!("stack.state_dir={}", state.path().display()),
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ess"));
    cmd.args([
        "demo",
        "--events",
        "20000",
        "--connections",
        "16",
        "--sinks",
        "2",
    ])
    .args(["--drain-timeout", "120s", "--run", &run]);
    for s in &sets {
        cmd.args(["--set", s]);
    }
    let mut child = cmd.spawn().expect("start ess demo");
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for ess demo") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ess demo did not finish within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reports = state.path().join("reports").join(&run);
    let summary = std::fs::read(reports.join("summary.json"));
    eph.cleanup().await;
    assert!(status.success(), "ess demo exited with {status}");
    for file in ["report.html", "throughput.png", "summary.json"] {
        assert!(
            reports.join(file).is_file(),
            "{file} missing in {}",
            reports.display()
        );
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&summary.expect("summary.json")).expect("summary.json is JSON");
    let v = &summary["verification"];
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["accepted"], 20000);
    assert_eq!(v["unique_ids"], 20000);
    assert_eq!(v["stored_rows"], 20000);
    assert_eq!(v["lost"], 0);
    assert_eq!(summary["load"]["requests_failed"], 0);
    let html = std::fs::read_to_string(reports.join("report.html")).expect("report.html");
    assert_eq!(html.matches("<svg").count(), 3);
}

fn rand_run() -> u64 {
    u64::from_str_radix(&uuid::Uuid::new_v4().simple().to_string()[..12], 16).unwrap_or(1)
}
