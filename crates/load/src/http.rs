//! A plain `GET` over the load generator's HTTP/1.1 client, for probes that read a status
//! code and a small body (`/readyz`, `/metrics`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// `GET url`: the status code and body (as text), or `None` when nothing answered within
/// `timeout`.
pub async fn get(url: &str, timeout: Duration) -> Option<(u16, String)> {
    let uri: hyper::Uri = url.parse().ok()?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let exchange = async {
        let resp = client.get(uri).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}
