//! A fixed-response HTTP server that answers like `ess ingest` (`202 {"accepted":…}`) after a
//! fixed service time: the common endpoint for cross-checking `ess load` against `wrk`.
//!
//! `cargo run --release -p ess-load --example fixed_server -- 127.0.0.1:18091 5`
//! listens on 127.0.0.1:18091 and answers every request after 5 ms.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::{get, post};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18091".into());
    let delay_ms: u64 = args.next().and_then(|d| d.parse().ok()).unwrap_or(5);
    let delay = Duration::from_millis(delay_ms);
    let accept = move |_body: Bytes| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        (StatusCode::ACCEPTED, r#"{"accepted":1,"ids":[]}"#)
    };
    let app = Router::new()
        .route("/v1/events", post(accept))
        .route("/v1/events/batch", post(accept))
        .route("/readyz", get(|| async { "ready" }));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("fixed_server: {listen}, {delay_ms} ms per request");
    axum::serve(listener, app).await
}
