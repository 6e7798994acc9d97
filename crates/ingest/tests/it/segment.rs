//! The Segment-compatible door, driven by the real SDKs (installed from their registries by
//! `tests/sdk/install.sh`): every call they send is a ClickHouse row with the right fields.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use ess_core::config::Config;
use ess_core::schema::{COLUMN_NAMES, EventRow};
use ess_core::wire::Millis;
use ess_testkit::{Ephemeral, eventually};
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::harness::{Case, Client, KEY, Server, assert_refused, with_keys};

/// The directory the SDKs are installed in (installing them the first time).
pub fn sdk_dir() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _once = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("bash")
        .arg(root.join("tests/sdk/install.sh"))
        .status()
        .expect("run tests/sdk/install.sh");
    assert!(status.success(), "tests/sdk/install.sh failed");
    std::env::var_os("ESS_SDK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../../target/sdk"))
}

/// Ingest and a sink on the test's own topic and database.
pub struct Pipeline {
    pub eph: Ephemeral,
    pub server: Server,
    pub client: Client,
    pub config: Config,
    sink_stop: Option<oneshot::Sender<()>>,
    sink: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Pipeline {
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let eph = Ephemeral::new(2).await;
        let mut config = with_keys(eph.config.clone());
        config.sink.listen = "127.0.0.1:0".into();
        config.sink.session_timeout_ms = 2000;
        config.sink.heartbeat_interval_ms = 500;
        config.sink.batch_max_wait = Duration::from_millis(100);
        tweak(&mut config);
        let (server, client) = Server::ready(config.clone()).await;
        let (tx, rx) = oneshot::channel::<()>();
        let sink = tokio::spawn(ess_sink::run(config.clone(), async {
            let _ = rx.await;
        }));
        Self {
            eph,
            server,
            client,
            config,
            sink_stop: Some(tx),
            sink: Some(sink),
        }
    }

    /// Every row, once at least `n` are stored.
    pub async fn rows(&self, n: usize) -> Vec<EventRow> {
        let client = self.eph.client(&self.eph.config.clickhouse.url).await;
        let sql = format!(
            "SELECT {COLUMN_NAMES} FROM {} ORDER BY event_time",
            self.eph.config.clickhouse.table
        );
        eventually(Duration::from_secs(60), "rows in ClickHouse", || async {
            let rows = client.query(&sql).fetch_all::<EventRow>().await.ok()?;
            (rows.len() >= n).then_some(rows)
        })
        .await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.sink_stop.take() {
            let _ = tx.send(());
        }
        if let Some(sink) = self.sink.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), sink).await;
        }
        self.server.stop().await;
        self.eph.cleanup().await;
    }
}

/// Runs an SDK script; returns the requests it reports (`{"status", "body"}` per line).
fn run_sdk(program: &PathBuf, script: &str, url: &str, run: &str) -> Vec<Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = ess_testkit::process::run(
        Command::new(program)
            .arg(root.join("tests/sdk").join(script))
            .args([url, KEY, run])
            .env("NODE_PATH", sdk_dir().join("node/node_modules")),
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The id a call gets: its `messageId` if that is a UUID, else the documented UUID v5.
fn expected_id(message_id: &str, source: &str) -> Uuid {
    match Uuid::try_parse(message_id) {
        Ok(id) => id,
        Err(_) => Uuid::new_v5(
            &ess_ingest::segment::MESSAGE_ID_NAMESPACE,
            format!("{source}\0{message_id}").as_bytes(),
        ),
    }
}

fn ms(value: &Value) -> i64 {
    Millis::parse_rfc3339(value.as_str().expect("a time string"))
        .expect("RFC 3339")
        .0
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("stored JSON")
}

/// Checks every call the SDK sent against its row, field by field; returns how many.
fn check_rows(requests: &[Value], rows: &[EventRow], agent_prefix: &str) -> usize {
    let mut checked = 0;
    for request in requests {
        assert_eq!(request["status"], 200, "{request}");
        let body = &request["body"];
        let sent_at = ms(&body["sentAt"]);
        for call in body["batch"].as_array().expect("batch") {
            let id = expected_id(call["messageId"].as_str().expect("messageId"), "test");
            let row = rows
                .iter()
                .find(|r| r.id == id)
                .unwrap_or_else(|| panic!("no row with id {id} for {call}"));
            let kind = call["type"].as_str().expect("type");
            let expected_type = if kind == "track" {
                call["event"].as_str().expect("event")
            } else {
                kind
            };
            assert_eq!(row.kind, expected_type, "{call}");
            assert_eq!(row.source, "test");
            let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
            assert_eq!(row.user_id, text(&call["userId"]), "{call}");
            assert_eq!(row.anonymous_id, text(&call["anonymousId"]), "{call}");
            let mut properties = match kind {
                "identify" | "group" => call["traits"].clone(),
                _ => call["properties"].clone(),
            };
            if kind == "page" {
                for key in ["name", "category"] {
                    if !call[key].is_null() {
                        properties[key] = call[key].clone();
                    }
                }
            }
            assert_eq!(json(&row.properties), properties, "{call}");
            assert_eq!(json(&row.context), call["context"], "{call}");
            let context_ip = call["context"]["ip"].as_str();
            assert_eq!(row.ip, context_ip.unwrap_or("127.0.0.1"), "{call}");
            assert!(
                row.user_agent.starts_with(agent_prefix),
                "{}",
                row.user_agent
            );
            // Segment's skew correction: receivedAt - (sentAt - timestamp), within the time
            // between receiving the request and stamping ingest_time.
            let original = ms(&call["timestamp"]);
            let expected = row.ingest_time - (sent_at - original);
            assert!(
                (row.event_time - expected).abs() < 1000,
                "event_time {} expected {expected} (client time {original}, sentAt {sent_at})",
                row.event_time
            );
            checked += 1;
        }
    }
    checked
}

async fn server_sdk(program: PathBuf, script: &str, agent: &str) {
    let pipeline = Pipeline::start(|_| {}).await;
    let url = format!("http://{}", pipeline.server.addr);
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let requests = tokio::task::spawn_blocking({
        let script = script.to_owned();
        move || run_sdk(&program, &script, &url, &run)
    })
    .await
    .expect("SDK thread");
    let calls: usize = requests
        .iter()
        .map(|r| r["body"]["batch"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(
        calls, 8,
        "track, identify, page and a batch of 5: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r["body"]["batch"].as_array().map_or(0, Vec::len) == 5),
        "one request carries the batch of five"
    );
    let rows = pipeline.rows(calls).await;
    assert_eq!(rows.len(), calls, "one row per call, none twice");
    assert_eq!(check_rows(&requests, &rows, agent), calls);
    // The clock skew was real: the SDK's own times are off by the skew, the rows are not.
    let now = Millis::now().0;
    let recent = rows
        .iter()
        .filter(|r| (now - r.event_time).abs() < 120_000)
        .count();
    assert_eq!(
        recent,
        calls - 1,
        "all but the historical call happened just now"
    );
    let historical = rows
        .iter()
        .find(|r| r.kind == "Batch Item 0")
        .expect("the historical call");
    let two_days = 2 * 24 * 3600 * 1000;
    assert!((now - historical.event_time - two_days).abs() < 120_000);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_calls_are_rows_field_by_field() {
    let python = sdk_dir().join("venv/bin/python");
    server_sdk(python, "send_python.py", "analytics-python/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_calls_are_rows_field_by_field() {
    sdk_dir();
    server_sdk(PathBuf::from("node"), "send_node.js", "analytics-node").await;
}

/// Serves the test page and analytics-next's UMD build on 127.0.0.1:0; returns its origin.
async fn serve_page() -> (String, tokio::task::JoinHandle<()>) {
    use axum::http::header::CONTENT_TYPE;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("tests/sdk/page.html")).expect("page.html");
    let sdk = std::fs::read_to_string(
        sdk_dir().join("node/node_modules/@segment/analytics-next/dist/umd/index.js"),
    )
    .expect("analytics-next UMD build");
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move { ([(CONTENT_TYPE, "text/html")], page) }),
        )
        .route(
            "/analytics.js",
            axum::routing::get(
                move || async move { ([(CONTENT_TYPE, "application/javascript")], sdk) },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let origin = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (origin, task)
}

fn run_browser(page: &str, ingest: &str, key: &str, run: &str) -> Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = ess_testkit::process::run(
        Command::new("node")
            .arg(root.join("tests/sdk/browser.js"))
            .args([page, ingest, key, run])
            .env("NODE_PATH", sdk_dir().join("node/node_modules")),
    );
    serde_json::from_slice(&output.stdout).expect("browser.js prints JSON")
}

/// A browser key and a page origin that may use it.
const WEB_KEY: &str = "web-key-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sdk_in_chromium_sends_from_allowed_pages_only() {
    let (origin, page_server) = serve_page().await;
    let (other_origin, other_server) = serve_page().await;
    let pipeline = Pipeline::start(|c| {
        c.ingest.api_keys.push(ess_core::config::ApiKey {
            id: "web".into(),
            key: WEB_KEY.into(),
            rate_per_sec: 1000,
            burst: 1000,
        });
        c.ingest.cors.allowed_origins = vec![origin.clone()];
        c.ingest.cors.public_keys = vec!["web".into()];
    })
    .await;
    let ingest = format!("http://{}", pipeline.server.addr);

    // A page of another origin: its SDK calls and its beacon are refused.
    let evil_run = format!("evil{}", &Uuid::new_v4().simple().to_string()[..8]);
    let evil = tokio::task::spawn_blocking({
        let (o, i, r) = (other_origin.clone(), ingest.clone(), evil_run.clone());
        move || run_browser(&o, &i, WEB_KEY, &r)
    })
    .await
    .expect("browser thread");
    let tried = evil["requests"].as_array().expect("requests");
    assert!(!tried.is_empty(), "the page tried to send: {evil}");
    assert!(
        tried.iter().all(|r| r["status"] != 200),
        "nothing from a page of another origin is accepted: {evil}"
    );

    // The allowed page.
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let good = tokio::task::spawn_blocking({
        let (o, i, r) = (origin.clone(), ingest.clone(), run.clone());
        move || run_browser(&o, &i, WEB_KEY, &r)
    })
    .await
    .expect("browser thread");
    assert_eq!(good["failed"], serde_json::json!([]), "{good}");
    let user_agent = good["userAgent"].as_str().expect("userAgent").to_owned();
    let posts: Vec<&Value> = good["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    let paths: Vec<&str> = posts
        .iter()
        .filter_map(|r| r["url"].as_str())
        .map(|u| &u[ingest.len()..])
        .collect();
    for path in ["/v1/i", "/v1/t", "/v1/p"] {
        assert!(paths.contains(&path), "the SDK posted to {path}: {paths:?}");
    }
    for post in &posts {
        eprintln!("{} {} {}", post["url"], post["status"], post["failure"]);
    }
    for post in &posts {
        assert_eq!(post["status"], 200, "{post}");
        let content_type = post["headers"]["content-type"].as_str().unwrap_or("");
        assert!(content_type.starts_with("text/plain"), "{post}");
    }

    // identify, track, page and the beacon.
    let rows = pipeline.rows(4).await;
    let mine: Vec<&EventRow> = rows
        .iter()
        .filter(|r| r.anonymous_id == format!("anon-{run}"))
        .collect();
    assert_eq!(mine.len(), 4, "{rows:?}");
    for post in posts.iter().filter(|p| p["body"].is_string()) {
        let call: Value = json(post["body"].as_str().expect("body"));
        if call["messageId"].is_null() {
            continue;
        }
        let id = expected_id(call["messageId"].as_str().expect("messageId"), "web");
        let row = mine
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no row for {call}"));
        assert_eq!(row.source, "web");
        assert_eq!(row.user_id, call["userId"].as_str().unwrap_or(""));
        assert_eq!(json(&row.context), call["context"]);
        assert_eq!(row.ip, "127.0.0.1");
        let original = ms(&call["timestamp"]);
        let expected = row.ingest_time - (ms(&call["sentAt"]) - original);
        assert!((row.event_time - expected).abs() < 1000, "{call}");
    }
    let kinds: Vec<&str> = mine.iter().map(|r| r.kind.as_str()).collect();
    for kind in ["identify", "Clicked Buy", "page", "Page Hidden"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    for row in &mine {
        assert_eq!(
            row.user_agent, user_agent,
            "every event has the page's user agent"
        );
    }
    let beacon = mine
        .iter()
        .find(|r| r.kind == "Page Hidden")
        .expect("beacon row");
    assert_eq!(beacon.id, expected_id(&format!("beacon-{run}"), "web"));
    assert_eq!(
        json(&beacon.properties),
        serde_json::json!({"hidden": true})
    );

    // Nothing of the other origin's page was stored, and its beacon was answered 403.
    assert!(
        !rows
            .iter()
            .any(|r| r.anonymous_id == format!("anon-{evil_run}")),
        "no event from a page of another origin"
    );
    let metrics = pipeline.client.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("ess_ingest_requests_total{status=\"403\"}"),
        "the refused requests are counted: {text}"
    );
    page_server.abort();
    other_server.abort();
    pipeline.stop().await;
}

fn basic(key: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

/// One bad request to a Segment route and what it must get.
fn bad(
    name: &'static str,
    path: &'static str,
    body: impl Into<String>,
    status: u16,
    code: &'static str,
) -> Case {
    let headers = vec![
        ("authorization", basic(KEY)),
        ("content-type", "application/json".into()),
    ];
    let body: String = body.into();
    Case::post(name, path, headers, body, status, code)
}

fn bad_cases() -> Vec<Case> {
    let track = r#"{"event":"e","userId":"u"}"#;
    let good = r#"{"type":"track","event":"e","userId":"u"}"#;
    vec![
        bad("no userId or anonymousId", "/v1/track", r#"{"event":"e"}"#, 400, "missing_field"),
        bad("track without event", "/v1/track", r#"{"userId":"u"}"#, 400, "missing_field"),
        bad("event is a number", "/v1/track", r#"{"event":5,"userId":"u"}"#, 400, "invalid_field"),
        bad("userId is an object", "/v1/identify", r#"{"userId":{}}"#, 400, "invalid_field"),
        bad("properties is an array", "/v1/track", r#"{"event":"e","userId":"u","properties":[1]}"#, 400, "invalid_field"),
        bad("traits is a string", "/v1/identify", r#"{"userId":"u","traits":"x"}"#, 400, "invalid_field"),
        bad("context is a number", "/v1/page", r#"{"userId":"u","context":1}"#, 400, "invalid_field"),
        bad("timestamp is not a date", "/v1/track", r#"{"event":"e","userId":"u","timestamp":"soon"}"#, 400, "invalid_field"),
        bad("group without groupId", "/v1/group", r#"{"userId":"u"}"#, 400, "missing_field"),
        bad("alias without previousId", "/v1/alias", r#"{"userId":"u"}"#, 400, "missing_field"),
        bad("type contradicts the route", "/v1/track", r#"{"type":"page","event":"e","userId":"u"}"#, 400, "invalid_field"),
        bad("malformed JSON", "/v1/track", r#"{"event":"#, 400, "invalid_json"),
        bad("an array, not a call", "/v1/track", format!("[{track}]"), 400, "invalid_event"),
        bad(
            "event over 32 KB",
            "/v1/track",
            format!(r#"{{"event":"e","userId":"u","properties":{{"p":"{}"}}}}"#, "x".repeat(33 * 1024)),
            413,
            "event_too_large",
        ),
        bad("unknown call type", "/v1/batch", format!(r#"{{"batch":[{good},{{"type":"purchase","userId":"u"}}]}}"#), 400, "invalid_field").at(1),
        bad("batch without a user", "/v1/batch", format!(r#"{{"batch":[{good},{good},{{"type":"track","event":"e"}}]}}"#), 400, "missing_field").at(2),
        bad("batch is not an array", "/v1/batch", r#"{"batch":{}}"#, 400, "invalid_field"),
        bad("no batch", "/v1/batch", r#"{"sentAt":"2026-01-01T00:00:00Z"}"#, 400, "missing_field"),
        bad("empty batch", "/v1/batch", r#"{"batch":[]}"#, 400, "empty_batch"),
        bad(
            "batch over 500 KB",
            "/v1/batch",
            format!(r#"{{"batch":[{}]}}"#, vec![format!(r#"{{"type":"track","event":"e","userId":"u","properties":{{"p":"{}"}}}}"#, "x".repeat(10_000)); 52].join(",")),
            413,
            "batch_too_large",
        ),
        bad("one call over 32 KB in a batch", "/v1/batch",
            format!(r#"{{"batch":[{good},{{"type":"track","event":"e","userId":"u","properties":{{"p":"{}"}}}}]}}"#, "x".repeat(33 * 1024)),
            413, "event_too_large").at(1),
        bad("wrong write key", "/v1/track", track, 401, "invalid_api_key").header("authorization", &basic("wrong-key-0123456789abcdef")),
        bad("wrong writeKey in the body", "/v1/track", r#"{"event":"e","userId":"u","writeKey":"wrong-key-0123456789abcdef"}"#, 401, "invalid_api_key").without("authorization"),
        bad("no write key", "/v1/track", track, 401, "missing_api_key").without("authorization"),
        bad("wrong content type", "/v1/track", track, 415, "unsupported_media_type").header("content-type", "application/x-www-form-urlencoded"),
        bad("a page of an origin not allowed", "/v1/track", track, 403, "origin_not_allowed").header("origin", "https://elsewhere.example"),
        bad("a browser key from a server", "/v1/track", track, 403, "public_key").header("authorization", &basic(WEB_KEY)),
        bad("over the key's rate", "/v1/batch", format!(r#"{{"batch":[{good},{good},{good},{good}]}}"#), 429, "rate_limited").header("authorization", &basic(crate::harness::SLOW_KEY)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_segment_calls_get_json_errors_and_nothing_is_written() {
    let eph = Ephemeral::new(1).await;
    let mut config = with_keys(eph.config.clone());
    config.ingest.api_keys.push(ess_core::config::ApiKey {
        id: "web".into(),
        key: WEB_KEY.into(),
        rate_per_sec: 1000,
        burst: 1000,
    });
    config.ingest.cors.allowed_origins = vec!["https://shop.example".into()];
    config.ingest.cors.public_keys = vec!["web".into()];
    let (server, client) = Server::ready(config.clone()).await;
    assert_refused(&client, &bad_cases(), |case, _, body| {
        body["code"] == case.code
    })
    .await;
    // Nothing of it reached Kafka; a valid call still does.
    let reply = client
        .send(
            "POST",
            "/v1/track",
            &[
                ("content-type", "text/plain"),
                ("authorization", &basic(KEY)),
            ],
            r#"{"event":"ok","anonymousId":"a"}"#.into(),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["success"], true);
    let records = crate::harness::read_topic(&config.kafka.brokers, &config.kafka.topic, 1).await;
    assert_eq!(records.len(), 1, "only the valid call is in the topic");
    assert_eq!(records[0].value["type"], "ok");
    server.stop().await;
    eph.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geoip_fills_location_for_the_client_behind_a_trusted_proxy_only() {
    let dir = tempfile_dir();
    let db = dir.join("test-city.mmdb");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(sdk_dir().join("venv/bin/python"))
        .arg(root.join("tests/sdk/make_mmdb.py"))
        .arg(&db)
        .status()
        .expect("make_mmdb.py");
    assert!(status.success(), "make_mmdb.py failed");
    let pipeline = Pipeline::start(|c| {
        c.ingest.geoip_db = Some(db.clone());
        c.ingest.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    // The same topic behind a server that trusts no proxy, and one that anonymizes.
    let mut untrusting = pipeline.config.clone();
    untrusting.ingest.trusted_proxies = Vec::new();
    let (other, other_client) = Server::ready(untrusting).await;
    let mut anonymizing = pipeline.config.clone();
    anonymizing.ingest.anonymize_ip = true;
    let (third, third_client) = Server::ready(anonymizing).await;

    let send = |client: Client, anonymous_id: &'static str, xff: &'static str| async move {
        let reply = client
            .send(
                "POST",
                "/v1/track",
                &[
                    ("authorization", &basic(KEY)),
                    ("content-type", "application/json"),
                    ("x-forwarded-for", xff),
                ],
                format!(
                    r#"{{"event":"geo","anonymousId":"{anonymous_id}","context":{{"app":"x"}}}}"#
                )
                .into(),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    };
    send(pipeline.client.clone(), "trusted", "203.0.113.9").await;
    send(other_client, "untrusted", "203.0.113.9").await;
    send(third_client, "anonymized", "198.51.100.77").await;
    let rows = pipeline.rows(3).await;
    let row = |id: &str| {
        rows.iter()
            .find(|r| r.anonymous_id == id)
            .unwrap_or_else(|| panic!("row {id}"))
    };
    let trusted = row("trusted");
    assert_eq!(trusted.ip, "203.0.113.9");
    let context = json(&trusted.context);
    assert_eq!(context["app"], "x", "the client's context is kept");
    assert_eq!(context["location"]["country"], "Germany");
    assert_eq!(context["location"]["city"], "Berlin");
    assert_eq!(context["location"]["region"], "Land Berlin");
    assert_eq!(context["location"]["latitude"], 52.52);
    let untrusted = row("untrusted");
    assert_eq!(
        untrusted.ip, "127.0.0.1",
        "X-Forwarded-For from an untrusted peer is ignored"
    );
    assert_eq!(json(&untrusted.context), serde_json::json!({"app": "x"}));
    let anonymized = row("anonymized");
    assert_eq!(
        anonymized.ip, "198.51.100.0",
        "stored without its host part"
    );
    assert_eq!(
        json(&anonymized.context)["location"]["city"],
        "Paris",
        "looked up before"
    );
    other.stop().await;
    third.stop().await;
    pipeline.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ess-geoip-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
