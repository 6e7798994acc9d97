//! `ess load` against a local server that answers like ingest: 202 with the accepted ids,
//! or the failures a real server produces (429, slow answers, a closed port).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use ess_load::engine::{LoadOptions, run};
use ess_load::generator::GenSettings;
use ess_load::ids::{RunId, decode};
use ess_load::plan::{Model, Plan, parse_stages};

#[derive(Default)]
struct Seen {
    requests: u64,
    ids: HashSet<uuid::Uuid>,
    events: u64,
}

#[derive(Clone)]
struct App {
    seen: Arc<Mutex<Seen>>,
    /// Every n-th request gets 429 (0: never).
    reject_every: u64,
    /// Delay before answering.
    delay: Duration,
}

async fn accept(State(app): State<App>, body: Bytes) -> (StatusCode, String) {
    if !app.delay.is_zero() {
        tokio::time::sleep(app.delay).await;
    }
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return (StatusCode::BAD_REQUEST, r#"{"error":"bad_json"}"#.into()),
    };
    let events = match value {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    let mut seen = app.seen.lock().expect("lock");
    seen.requests += 1;
    if app.reject_every > 0 && seen.requests % app.reject_every == 0 {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":"rate_limited","message":"slow down"}"#.into(),
        );
    }
    let mut ids = Vec::new();
    for e in &events {
        let id: uuid::Uuid = e["id"].as_str().expect("id").parse().expect("uuid");
        assert!(e["type"].is_string() && e["properties"].is_object());
        seen.ids.insert(id);
        seen.events += 1;
        ids.push(id.to_string());
    }
    (
        StatusCode::ACCEPTED,
        serde_json::json!({"accepted": ids.len(), "ids": ids}).to_string(),
    )
}

async fn serve(reject_every: u64, delay: Duration) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/v1/events", post(accept))
        .route("/v1/events/batch", post(accept))
        .with_state(App {
            seen: seen.clone(),
            reject_every,
            delay,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (format!("http://{addr}"), seen)
}

fn options(target: &str, plan: Plan) -> LoadOptions {
    LoadOptions {
        target: target.to_owned(),
        api_key: Some("k".repeat(20)),
        plan,
        batch: 1,
        timeout: Duration::from_secs(5),
        max_events: None,
        duration: None,
        max_inflight: 1000,
        generator: GenSettings::default(),
        run: RunId::random(),
        progress: false,
    }
}

fn closed(connections: f64) -> Plan {
    Plan {
        model: Model::Closed,
        start: connections,
        stages: vec![],
    }
}

fn open(rate: f64) -> Plan {
    Plan {
        model: Model::Open,
        start: rate,
        stages: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_model_sends_exactly_the_event_limit_and_every_id_is_accepted() {
    let (url, seen) = serve(0, Duration::ZERO).await;
    let mut opts = options(&url, closed(8.0));
    opts.max_events = Some(5_000);
    let run_id = opts.run;
    let (summary, accepted) = run(opts, std::future::pending()).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(summary.requests, 5_000);
    assert_eq!(summary.requests_ok, 5_000);
    assert_eq!(summary.events_accepted, 5_000);
    assert_eq!(summary.success_pct, 100.0);
    assert_eq!(summary.outcomes["202"], 5_000);
    assert_eq!(accepted.len(), 5_000);
    assert_eq!(accepted.to_ranges(), vec![[0, 5_000]]);
    assert_eq!(seen.ids.len(), 5_000);
    for id in &seen.ids {
        assert_eq!(decode(id).unwrap().0, run_id);
    }
    assert!(summary.latency.p50 > 0.0 && summary.latency.max >= summary.latency.p99);
    let per_second: u64 = summary.timeline.iter().map(|s| s.requests).sum();
    assert_eq!(per_second, 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_holds_the_rate_and_batches_reach_the_batch_endpoint() {
    let (url, seen) = serve(0, Duration::ZERO).await;
    let mut opts = options(&url, open(200.0));
    opts.duration = Some(Duration::from_secs(3));
    opts.batch = 10;
    let (summary, accepted) = run(opts, std::future::pending()).await.unwrap();
    // 200 requests/s for 3 s; the scheduler neither runs ahead nor falls behind.
    assert!(
        (560..=601).contains(&summary.requests),
        "requests {}",
        summary.requests
    );
    assert_eq!(summary.events_accepted, summary.requests * 10);
    assert_eq!(accepted.len(), summary.requests * 10);
    assert_eq!(seen.lock().unwrap().events, summary.requests * 10);
    assert!(summary.corrected_for_coordinated_omission);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_and_rejected_events_are_not_accepted() {
    let (url, _seen) = serve(4, Duration::ZERO).await;
    let mut opts = options(&url, closed(4.0));
    opts.max_events = Some(1_000);
    let (summary, accepted) = run(opts, std::future::pending()).await.unwrap();
    assert_eq!(summary.requests, 1_000);
    assert_eq!(summary.outcomes["429"], 250);
    assert_eq!(summary.requests_failed, 250);
    assert_eq!(summary.events_accepted, 750);
    assert_eq!(accepted.len(), 750);
    assert_eq!(summary.success_pct, 75.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_refused_connections_are_failures_not_silence() {
    let (url, _seen) = serve(0, Duration::from_millis(400)).await;
    let mut opts = options(&url, closed(2.0));
    opts.timeout = Duration::from_millis(100);
    opts.duration = Some(Duration::from_millis(600));
    let (summary, accepted) = run(opts, std::future::pending()).await.unwrap();
    assert!(summary.requests >= 2);
    assert_eq!(summary.outcomes.get("timeout"), Some(&summary.requests));
    assert_eq!(accepted.len(), 0);

    // A port nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let mut opts = options(&format!("http://127.0.0.1:{port}"), closed(1.0));
    opts.max_events = Some(3);
    let (summary, _) = run(opts, std::future::pending()).await.unwrap();
    assert_eq!(summary.requests, 3);
    assert_eq!(summary.outcomes.get("connect_error"), Some(&3));
    assert_eq!(summary.success_pct, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_latency_counts_from_the_scheduled_start() {
    // One connection's worth of capacity: with in-flight capped at 1 and a 50 ms server, a
    // 100/s schedule falls behind, and the waiting must show in the latency.
    let (url, _seen) = serve(0, Duration::from_millis(50)).await;
    let mut opts = options(&url, open(100.0));
    opts.duration = Some(Duration::from_secs(1));
    opts.max_inflight = 1;
    let (summary, _) = run(opts, std::future::pending()).await.unwrap();
    assert!(summary.requests >= 10);
    assert!(
        summary.latency.max > 300.0,
        "queued requests must count their wait: max {} ms",
        summary.latency.max
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_ramp_connections_and_resends_reuse_ids() {
    let (url, seen) = serve(0, Duration::from_millis(2)).await;
    let mut opts = options(
        &url,
        Plan {
            model: Model::Closed,
            start: 0.0,
            stages: parse_stages("500ms:4,500ms:4,300ms:0").unwrap(),
        },
    );
    opts.generator.dup_ratio = 0.2;
    let (summary, accepted) = run(opts, std::future::pending()).await.unwrap();
    assert!(summary.requests > 50, "requests {}", summary.requests);
    assert!(summary.resent > 0);
    assert_eq!(summary.events_sent, summary.requests);
    assert_eq!(accepted.len(), summary.unique_events);
    assert_eq!(seen.lock().unwrap().ids.len() as u64, summary.unique_events);
    assert!(summary.duration_s < 2.5);
}
