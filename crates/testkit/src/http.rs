//! A raw HTTP/1.1 connection, for what a well-behaved HTTP client never does: half-sent heads,
//! slow bodies, idling, many connections held open at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The API key the ingest servers of the tests accept.
pub const KEY: &str = "test-key-0123456789abcdef";

/// One raw TCP connection.
#[derive(Debug)]
pub struct Raw {
    /// The connection.
    pub stream: TcpStream,
    /// When it was opened.
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
    /// What the server sent, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status of the first response, if any arrived.
    pub fn status(&self) -> Option<u16> {
        let text = self.text();
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// The JSON body of the first response (`null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        let text = self.text();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or_default()
    }

    /// The ids of a 202.
    pub fn ids(&self) -> Vec<String> {
        assert_eq!(self.status(), Some(202), "{}", self.text());
        self.json()["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|id| id.as_str().expect("id").to_owned())
            .collect()
    }
}

impl Raw {
    /// Connects to `addr`.
    pub async fn try_connect(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            stream: TcpStream::connect(addr).await?,
            opened: Instant::now(),
        })
    }

    /// Connects to `addr`, panicking if it cannot.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::try_connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Sends `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Reads until the server closes the connection or `deadline` passes.
    pub async fn until_closed(&mut self, deadline: Instant) -> Ending {
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

    /// Whether the server closes the connection before `deadline`, sending nothing.
    pub async fn closed_by(&mut self, deadline: Instant) -> bool {
        let mut buf = [0u8; 1024];
        matches!(
            tokio::time::timeout_at(deadline.into(), self.stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// Reads one response whose body has a `content-length` (or until the server closes),
    /// waiting at most `timeout`.
    pub async fn response(&mut self, timeout: Duration) -> Ending {
        let deadline = Instant::now() + timeout;
        let mut bytes = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
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

/// The length of the first response in `bytes`, if it is complete.
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

/// A JSON POST to `path` with the API key `key`, head and body, as raw bytes.
pub fn raw_post(path: &str, key: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The head of a `/v1/events` POST announcing a 100-byte body, and the first few bytes of
/// that body: a request still uploading.
pub fn uploading(key: &str) -> Vec<u8> {
    format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"type\":"
    )
    .into_bytes()
}

/// A `GET` of `path` on a new connection; `None` if nothing answers.
pub async fn get(addr: SocketAddr, path: &str) -> Option<Ending> {
    let mut conn = Raw::try_connect(addr).await.ok()?;
    conn.send(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await;
    Some(conn.response(Duration::from_secs(5)).await)
}
