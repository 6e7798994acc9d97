//! The ingest server in-process on port 0, an HTTP client, and a consumer that reads a topic back.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ess_core::config::{ApiKey, AuthMode, Config};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The API key every test server accepts.
pub const KEY: &str = "test-key-0123456789abcdef";
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

/// One message read back from the topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub value: serde_json::Value,
    pub raw: Vec<u8>,
    pub timestamp_ms: Option<i64>,
    pub schema_header: Option<String>,
}

/// Reads the whole topic from the beginning: at least `expect` messages, then until every
/// partition is at its end (so duplicates would show).
pub async fn read_topic(brokers: &str, topic: &str, expect: usize) -> Vec<Record> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_topic_blocking(&brokers, &topic, expect))
        .await
        .expect("reader thread")
}

fn read_topic_blocking(brokers: &str, topic: &str, expect: usize) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", ess_testkit::unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let partitions = ess_core::kafka::partition_ids(&consumer, topic, Duration::from_secs(10))
        .expect("metadata");
    assert!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("offset");
    }
    consumer.assign(&list).expect("assign");
    let mut records = Vec::new();
    let mut at_end: HashSet<i32> = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                at_end.remove(&message.partition());
                let raw = message.payload().unwrap_or_default().to_vec();
                let schema_header = message.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "ess-schema")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                records.push(Record {
                    key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    value: serde_json::from_slice(&raw).expect("message value is JSON"),
                    raw,
                    timestamp_ms: message.timestamp().to_millis(),
                    schema_header,
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
        if records.len() >= expect && at_end.len() == partitions.len() {
            return records;
        }
    }
    panic!(
        "read {} of {expect} messages from {topic} before the deadline",
        records.len()
    );
}

/// Asserts every id appears exactly once among `records`, each keyed by its id.
pub fn assert_exactly_once(records: &[Record], ids: &[String]) {
    let mut seen = std::collections::HashMap::new();
    for r in records {
        assert_eq!(
            r.value["id"].as_str(),
            Some(r.key.as_str()),
            "key is the event id"
        );
        *seen.entry(r.key.clone()).or_insert(0usize) += 1;
    }
    let mut missing = 0;
    for id in ids {
        match seen.get(id) {
            Some(1) => {}
            Some(n) => panic!("event {id} is in the topic {n} times"),
            None => missing += 1,
        }
    }
    assert_eq!(
        missing, 0,
        "{missing} acknowledged events are not in the topic"
    );
}

/// A raw TCP connection, for what a well-behaved HTTP client never does (half-sent heads,
/// slow bodies, idling).
#[derive(Debug)]
pub struct Raw {
    pub stream: tokio::net::TcpStream,
    pub opened: Instant,
}

/// How a raw connection ended while being read.
#[derive(Debug)]
pub struct Ending {
    /// Everything the server sent.
    pub bytes: Vec<u8>,
    /// When the server closed the connection (EOF or reset), if it did before the deadline.
    pub closed_at: Option<Instant>,
}

impl Ending {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status of the first response, if any arrived.
    pub fn status(&self) -> Option<u16> {
        let text = self.text();
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// The JSON body of the first response.
    pub fn json(&self) -> serde_json::Value {
        let text = self.text();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or_default()
    }
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Self {
            stream,
            opened: Instant::now(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Reads until the server closes the connection or `deadline` passes.
    pub async fn until_closed(&mut self, deadline: Instant) -> Ending {
        use tokio::io::AsyncReadExt;
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let read = tokio::time::timeout_at(deadline.into(), self.stream.read(&mut buf)).await;
            match read {
                Err(_elapsed) => {
                    return Ending {
                        bytes,
                        closed_at: None,
                    };
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return Ending {
                        bytes,
                        closed_at: Some(Instant::now()),
                    };
                }
                Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads one response whose body has a `content-length`, waiting at most `timeout`.
    pub async fn response(&mut self, timeout: Duration) -> Ending {
        use tokio::io::AsyncReadExt;
        let deadline = Instant::now() + timeout;
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = complete_response(&bytes) {
                bytes.truncate(end);
                return Ending {
                    bytes,
                    closed_at: None,
                };
            }
            let read = tokio::time::timeout_at(deadline.into(), self.stream.read(&mut buf)).await;
            match read {
                Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
                Ok(_) => {
                    return Ending {
                        bytes,
                        closed_at: Some(Instant::now()),
                    };
                }
                Err(_elapsed) => panic!(
                    "no complete response within {timeout:?}; got {:?}",
                    String::from_utf8_lossy(&bytes)
                ),
            }
        }
    }
}

/// The length of the first complete response in `bytes`, if it is complete.
fn complete_response(bytes: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (head, _) = text.split_once("\r\n\r\n")?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let end = head.len() + 4 + length;
    (bytes.len() >= end).then_some(end)
}

/// A request head and body as raw bytes, with the test key.
pub fn raw_post(path: &str, key: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
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
