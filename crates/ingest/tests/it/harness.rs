//! The ingest server in-process on port 0 and an HTTP client for it; with what `ess_testkit`
//! has for raw connections and reading a topic back.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ess_core::config::{ApiKey, AuthMode, Config};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use ess_testkit::http::{KEY, Raw, raw_post, uploading};
pub use ess_testkit::topic::{Record, assert_exactly_once, read_topic};

/// A key with a tiny rate limit (burst 3, 1 event/s).
pub const SLOW_KEY: &str = "slow-key-0123456789abcdef";

/// Configuration for a test server writing to `config`'s topic.
pub fn with_keys(mut config: Config) -> Config {
    config.ingest.auth = AuthMode::On;
    config.ingest.api_keys = vec![
        ApiKey {
            id: "test".into(),
            key: KEY.into(),
            rate_per_sec: 1_000_000,
            burst: 1_000_000,
        },
        ApiKey {
            id: "slow".into(),
            key: SLOW_KEY.into(),
            rate_per_sec: 1,
            burst: 3,
        },
    ];
    config.ingest.produce_timeout = Duration::from_secs(3);
    config.ingest.max_body_bytes = 1 << 20;
    config.ingest.max_batch_events = 1000;
    config.ingest.max_properties_bytes = 16 * 1024;
    config.ingest.max_depth = 8;
    config
}

/// A running server; stopped (gracefully) on [`Server::stop`] or drop.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ess_ingest::Error>>>,
}

impl Server {
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(ess_ingest::serve(listener, config, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Starts and waits until `/readyz` answers 200.
    pub async fn ready(config: Config) -> (Self, Client) {
        let server = Self::start(config).await;
        let client = Client::new(server.addr);
        ess_testkit::eventually(Duration::from_secs(30), "readyz 200", || async {
            (client.get("/readyz").await.status == 200).then_some(())
        })
        .await;
        (server, client)
    }

    /// Sends the shutdown signal without waiting.
    pub fn signal(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits for `serve` to return.
    pub async fn stop(mut self) {
        self.signal();
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stops within 30 s")
                .expect("server task");
            result.expect("serve returns Ok");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal();
    }
}

/// An HTTP/1.1 client for one server.
#[derive(Debug, Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
    base: String,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The ids of a 202.
    pub fn ids(&self) -> Vec<String> {
        assert_eq!(
            self.status,
            202,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        let json = self.json();
        let ids: Vec<String> = json["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_str().expect("id").to_owned())
            .collect();
        assert_eq!(json["accepted"].as_u64(), Some(ids.len() as u64));
        ids
    }
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            inner: HyperClient::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], Bytes::new()).await
    }

    /// POST with the test key and `Content-Type: application/json`, plus `headers`.
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.send(
            "POST",
            path,
            &[
                ("authorization", &format!("Bearer {KEY}")),
                ("content-type", "application/json"),
            ],
            body.into(),
        )
        .await
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        self.try_send(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = self
            .inner
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// Reads `config`'s topic and asserts it holds exactly the events `ids`, each once; its records.
pub async fn assert_topic_holds(config: &Config, ids: &[String]) -> Vec<Record> {
    let records = read_topic(&config.kafka.brokers, &config.kafka.topic, ids.len()).await;
    assert_eq!(records.len(), ids.len());
    assert_exactly_once(&records, ids);
    records
}

/// The process's limit on open files (the soft limit; Linux).
pub fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

/// The value of one metric line starting with `prefix` in `/metrics`.
pub async fn metric(client: &Client, prefix: &str) -> Option<f64> {
    let text = client.get("/metrics").await.body;
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A request that must be refused with `status` and a JSON body naming `code`.
#[derive(Debug)]
pub struct Case {
    pub name: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    pub status: u16,
    pub code: &'static str,
    /// The index of the event at fault in a batch.
    pub index: Option<u64>,
}

impl Case {
    /// A POST to `path` with `headers`.
    pub fn post(
        name: &'static str,
        path: &'static str,
        headers: Vec<(&'static str, String)>,
        body: impl Into<Bytes>,
        status: u16,
        code: &'static str,
    ) -> Self {
        Self {
            name,
            method: "POST",
            path,
            headers,
            body: body.into(),
            status,
            code,
            index: None,
        }
    }

    /// With `key: value` instead of any `key` header it had.
    pub fn header(mut self, key: &'static str, value: &str) -> Self {
        self.headers.retain(|(k, _)| *k != key);
        self.headers.push((key, value.into()));
        self
    }

    /// Without the `key` header.
    pub fn without(mut self, key: &'static str) -> Self {
        self.headers.retain(|(k, _)| *k != key);
        self
    }

    /// The error names the event at `index`.
    pub fn at(mut self, index: u64) -> Self {
        self.index = Some(index);
        self
    }
}

/// Sends every case; panics listing those not answered with their status and a JSON body
/// whose `error` is their code, with a message and their index, for which `also` holds too.
pub async fn assert_refused(
    client: &Client,
    cases: &[Case],
    also: impl Fn(&Case, &Reply, &serde_json::Value) -> bool,
) {
    let mut failures = Vec::new();
    for case in cases {
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = client
            .send(case.method, case.path, &headers, case.body.clone())
            .await;
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        let ok = reply.status == case.status
            && body["error"] == case.code
            && body["message"].as_str().is_some_and(|m| !m.is_empty())
            && body["index"].as_u64() == case.index
            && also(case, &reply, &body);
        if !ok {
            failures.push(format!(
                "{}: expected {} {} index {:?}, got {} {}",
                case.name,
                case.status,
                case.code,
                case.index,
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
