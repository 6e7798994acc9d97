//! `/metrics` (Prometheus), `/healthz` (the poll loop is alive) and `/readyz` (assigned,
//! reconciled and not draining).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Liveness and readiness, written by the poll loop.
#[derive(Debug, Default)]
pub struct Health {
    /// Last time the poll loop went round (ms since the epoch).
    pub polled_at: AtomicI64,
    /// In the group with an assignment, and not draining.
    pub ready: AtomicBool,
    /// Assignments received (each rebalance that gave this sink partitions).
    pub assignments: AtomicU64,
    /// Revocations of a non-empty assignment (each rebalance that took partitions away).
    pub revocations: AtomicU64,
    /// Partitions assigned now.
    pub assigned: AtomicU64,
}

impl Health {
    /// The poll loop went round.
    pub fn beat(&self) {
        self.polled_at
            .store(ess_core::wire::Millis::now().0, Ordering::Relaxed);
    }
}

/// The process-wide Prometheus recorder (installed once; several in-process sinks share it).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let seconds = [
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
            60.0, 300.0,
        ];
        let sizes = [100.0, 1e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 1e6, 4e6, 16e6, 64e6];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_rows".into()), &sizes))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), &sizes))
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only its own");
        }
        describe();
        handle
    })
}

/// The counters the sink records, with their help text.
const COUNTERS: &[(&str, &str)] = &[
    ("ess_sink_rows_total", "Rows ClickHouse acknowledged"),
    ("ess_sink_batches_total", "Batches stored"),
    (
        "ess_sink_batches_abandoned_total",
        "Batches given up on revoke or shutdown",
    ),
    (
        "ess_sink_insert_retries_total",
        "Failed insert attempts that were retried",
    ),
    (
        "ess_sink_dlq_total",
        "Messages sent to the dead-letter topic",
    ),
    (
        "ess_sink_skipped_total",
        "Messages skipped because reconciliation found them stored",
    ),
    (
        "ess_sink_offset_reused_total",
        "Messages stored although ClickHouse held another event at their offset (topic created again)",
    ),
    ("ess_sink_commits_total", "Offset commits"),
];

/// The histograms the sink records, with their help text.
const HISTOGRAMS: &[(&str, &str)] = &[
    ("ess_sink_batch_rows", "Rows per stored batch"),
    ("ess_sink_batch_bytes", "RowBinary bytes per stored batch"),
    (
        "ess_sink_insert_seconds",
        "Duration of one successful INSERT",
    ),
    (
        "ess_sink_batch_seconds",
        "From handing a batch to the writer to its acknowledgement",
    ),
    (
        "ess_sink_e2e_seconds",
        "From ingest_time to ClickHouse's acknowledgement, per row",
    ),
];

/// The gauges the sink records, with their help text.
const GAUGES: &[(&str, &str)] = &[
    (
        "ess_sink_lag",
        "Consumer lag per partition (messages), from librdkafka statistics",
    ),
    (
        "ess_sink_paused",
        "1 while partitions are paused because the writer is behind",
    ),
    (
        "ess_sink_assigned_partitions",
        "Partitions assigned to this sink",
    ),
];

fn describe() {
    for (name, help) in COUNTERS {
        metrics::describe_counter!(*name, *help);
    }
    for (name, help) in HISTOGRAMS {
        metrics::describe_histogram!(*name, *help);
    }
    for (name, help) in GAUGES {
        metrics::describe_gauge!(*name, *help);
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: &'static PrometheusHandle,
}

/// The router.
pub fn app(health: Arc<Health>) -> Router {
    let state = AppState {
        health,
        metrics: prometheus(),
    };
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics_text(State(s): State<AppState>) -> String {
    s.metrics.run_upkeep();
    s.metrics.render()
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    let age = ess_core::wire::Millis::now().0 - s.health.polled_at.load(Ordering::Relaxed);
    if age < Duration::from_secs(30).as_millis() as i64 {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "poll loop stalled\n")
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
