//! Taking in a request body within the limits: its size, the byte budget, the read timeout,
//! and shutdown.
//!
//! In order: a declared `Content-Length` over `max_body_bytes` is 413 at once; then the
//! request takes its share of the byte budget ([`crate::budget`]) for the declared length —
//! 503 `overloaded` if it does not fit, before the body is read; then the body is read within
//! `read_timeout` (408), growing the share for a body without a declared length; then it is
//! decompressed, growing the share as it goes. A refused body is read and thrown away (up to
//! a bound) so that the client has finished sending when the answer arrives, unless the
//! client waits for `100 Continue`. Once shutdown starts, a request still receiving its body,
//! or not yet at the producer ([`Intake::admit`]), gets 503 `shutting_down`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::http::header::{CONTENT_LENGTH, EXPECT};
use bytes::{Bytes, BytesMut};
use ess_core::config::{BYTES_PER_EVENT, IngestConfig};
use http_body_util::BodyExt;
use tokio::sync::Notify;

use crate::api::ApiError;
use crate::body::{self, BodyError, Encoding};
use crate::budget::{Budget, Held};

/// Compressed bodies larger than this are decoded on a blocking thread.
const INLINE_DECODE_BYTES: usize = 64 * 1024;
/// Most bytes read and thrown away after refusing a body.
const DRAIN_BYTES: u64 = 64 << 20;
/// The first allocation for a body of undeclared length.
const FIRST_CHUNKED_BYTES: usize = 16 * 1024;

/// The limits every request body is taken in under, and the shutdown switch.
#[derive(Debug)]
pub struct Intake {
    budget: Arc<Budget>,
    max_body_bytes: usize,
    read_timeout: Duration,
    retry_after: u32,
    stopping: AtomicBool,
    stop: Notify,
}

/// A request body, and the share of the byte budget that holds it until the request is
/// answered.
#[derive(Debug)]
pub struct Received {
    /// The body, decompressed.
    pub bytes: Bytes,
    /// Its share of the byte budget.
    pub held: Held,
}

/// Why reading a body stopped early.
enum Cut {
    TooLarge,
    Overloaded,
    Broken,
}

impl Intake {
    /// From `[ingest]`.
    pub fn new(config: &IngestConfig) -> Self {
        Self {
            budget: Budget::new(config.max_buffered_bytes),
            max_body_bytes: config.max_body_bytes,
            read_timeout: config.read_timeout,
            retry_after: config.retry_after_secs,
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
        }
    }

    /// Bytes of request bodies held right now.
    pub fn buffered_bytes(&self) -> usize {
        self.budget.used()
    }

    /// Starts shutdown: requests still receiving their body, and those not yet at the
    /// producer, get 503 `shutting_down`.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_waiters();
    }

    /// Adds the share of `events` parsed events to `held`; 503 `overloaded` if it does not fit.
    pub fn hold_events(&self, held: &mut Held, events: usize) -> Result<(), ApiError> {
        if held.grow(events.saturating_mul(BYTES_PER_EVENT)) {
            Ok(())
        } else {
            Err(self.overloaded())
        }
    }

    /// Whether a request may hand its events to the producer (not once shutdown started).
    pub fn admit(&self) -> Result<(), ApiError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(self.shutting_down());
        }
        Ok(())
    }

    fn shutting_down(&self) -> ApiError {
        ApiError::ShuttingDown {
            retry_after: self.retry_after,
        }
    }

    /// Resolves once shutdown has started.
    async fn stopped(&self) {
        let notified = self.stop.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// Reads and decompresses the body within the limits (see the module docs).
    pub async fn receive(
        &self,
        headers: &HeaderMap,
        mut body: Body,
        encoding: Encoding,
    ) -> Result<Received, ApiError> {
        let limit = self.max_body_bytes;
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            self.refuse(headers, body).await;
            return Err(BodyError::TooLarge(limit, "").into());
        }
        let declared = declared.and_then(|len| usize::try_from(len).ok());
        let Some(mut held) = self.budget.hold(declared.unwrap_or(0)) else {
            self.refuse(headers, body).await;
            return Err(self.overloaded());
        };
        let read = tokio::time::timeout(
            self.read_timeout,
            collect(&mut body, declared, limit, &mut held),
        );
        let collected = tokio::select! {
            biased;
            collected = read => collected,
            () = self.stopped() => return Err(self.shutting_down()),
        };
        let raw = match collected {
            Err(_elapsed) => return Err(ApiError::ReadTimeout),
            Ok(Ok(raw)) => raw,
            Ok(Err(Cut::Broken)) => return Err(ApiError::BodyRead),
            Ok(Err(cut)) => {
                drop(held);
                self.refuse(headers, body).await;
                return Err(match cut {
                    Cut::Overloaded => self.overloaded(),
                    _ => BodyError::TooLarge(limit, "").into(),
                });
            }
        };
        let (bytes, held) = decode(raw, encoding, limit, held).await?;
        let bytes = bytes.map_err(|e| match e {
            BodyError::Overloaded => self.overloaded(),
            other => other.into(),
        })?;
        Ok(Received { bytes, held })
    }

    fn overloaded(&self) -> ApiError {
        ApiError::Overloaded {
            retry_after: self.retry_after,
        }
    }

    /// Reads and discards what is left of a refused body (up to [`DRAIN_BYTES`] within
    /// `read_timeout`, until shutdown), so that the client has finished sending when the
    /// answer arrives: a server that answers and closes with unread bytes makes the kernel
    /// reset the connection, and the client never sees the answer. A client that waits for
    /// `100 Continue` sends nothing more, and is answered at once.
    async fn refuse(&self, headers: &HeaderMap, mut body: Body) {
        let waits_for_continue = headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if waits_for_continue {
            return;
        }
        let discard = async {
            let mut seen = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if seen > DRAIN_BYTES {
                    break;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(self.read_timeout, discard) => {}
            () = self.stopped() => {}
        }
    }
}

/// Reads the whole body into one buffer of at most `limit` bytes. A declared length was
/// taken from the budget already; a body without one grows `held` as it arrives.
async fn collect(
    body: &mut Body,
    declared: Option<usize>,
    limit: usize,
    held: &mut Held,
) -> Result<Bytes, Cut> {
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Cut::Broken)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = buf.len() + data.len();
        if len > limit {
            return Err(Cut::TooLarge);
        }
        if len > buf.capacity() {
            let want = (buf.capacity() * 2)
                .max(len)
                .max(FIRST_CHUNKED_BYTES)
                .min(limit);
            if !held.grow(want - buf.capacity()) {
                return Err(Cut::Overloaded);
            }
            buf.reserve(want - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// Decompresses `raw` (on a blocking thread when it is large), growing `held`.
async fn decode(
    raw: Bytes,
    encoding: Encoding,
    limit: usize,
    mut held: Held,
) -> Result<(Result<Bytes, BodyError>, Held), ApiError> {
    if encoding == Encoding::Identity || raw.len() <= INLINE_DECODE_BYTES {
        let decoded = body::decode(raw, encoding, limit, &mut held);
        return Ok((decoded, held));
    }
    tokio::task::spawn_blocking(move || {
        let decoded = body::decode(raw, encoding, limit, &mut held);
        (decoded, held)
    })
    .await
    .map_err(|_| ApiError::BodyRead)
}
