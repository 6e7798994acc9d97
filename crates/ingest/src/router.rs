//! Routes and handlers.
//!
//! A request goes: API key → media type and encoding → the tokens for its declared event count
//! (`X-Event-Count`) reserved, or the key has a token left → body within the size, the byte
//! budget and the read timeout, decompressed ([`crate::intake`]) → validation of every event
//! → the count matches the declared one → rate limit (the reserved tokens kept, or tokens
//! taken for the events) → producer → wait for the broker's verdict on every event → 202, or
//! an error (see [`crate::api`]).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ess_core::config::{Config, IngestConfig};
use ess_core::wire::{Millis, WireEvent};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::api::{Accepted, ApiError, EventResult, json_response};
use crate::auth::{self, Keys};
use crate::body::{self, Format};
use crate::client_event::{self, Event, EventLimits};
use crate::context::{ClientAddress, RequestContext};
use crate::intake::Intake;
use crate::metrics::Metrics;
use crate::producer::{Delivery, EnqueueError, Producer};

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub(crate) config: IngestConfig,
    pub(crate) limits: EventLimits,
    pub(crate) keys: Keys,
    pub(crate) intake: Intake,
    pub(crate) client_address: ClientAddress,
    producer: Producer,
    pub(crate) metrics: Metrics,
    pub(crate) ready: AtomicBool,
    draining: AtomicBool,
    empty_properties: Box<RawValue>,
    /// The Segment routes' state (CORS, GeoIP, limits).
    pub(crate) tracking: crate::tracking::Tracking,
}

impl AppState {
    /// Builds the state; the producer is created but the broker is not contacted yet.
    pub fn new(config: &Config) -> Result<Self, crate::Error> {
        let ingest = &config.ingest;
        let metrics = Metrics::new();
        let stats = metrics.producer_stats(&config.kafka.topic);
        Ok(Self {
            config: ingest.clone(),
            limits: EventLimits {
                max_type_len: ingest.max_type_len,
                max_properties_bytes: ingest.max_properties_bytes,
                max_depth: ingest.max_depth,
                max_batch_events: ingest.max_batch_events,
            },
            keys: {
                let mut keys = Keys::new(ingest.auth, &ingest.api_keys);
                keys.mark_public(&ingest.cors.public_keys);
                keys
            },
            intake: Intake::new(ingest),
            client_address: ClientAddress::new(ingest),
            producer: Producer::new(config, stats).map_err(crate::Error::Producer)?,
            metrics,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            empty_properties: RawValue::from_string("{}".to_owned())
                .map_err(|e| crate::Error::Internal(e.to_string()))?,
            tracking: crate::tracking::Tracking::new(ingest).map_err(crate::Error::Internal)?,
        })
    }

    /// The producer.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Marks the broker as having answered (readiness turns 200 unless draining).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Marks the server as draining: readiness turns 503, and requests not yet at the
    /// producer get 503 `shutting_down`.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.intake.stop();
    }

    /// The body limits and the byte budget.
    pub fn intake(&self) -> &Intake {
        &self.intake
    }

    pub(crate) fn respond(&self, response: Response) -> Response {
        self.metrics.request(response.status().as_u16());
        response
    }
}

/// The router over `state`.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/events", post(post_event))
        .route("/v1/events/batch", post(post_batch))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::tracking::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn post_event(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let result = ingest(&state, request, false).await;
    state.respond(result.into_response())
}

async fn post_batch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let result = ingest(&state, request, true).await;
    state.respond(result.into_response())
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    state.respond(json_response(StatusCode::OK, r#"{"status":"ok"}"#.into()))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let (status, text) = if state.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !state.ready.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    } else {
        (StatusCode::OK, "ready")
    };
    state.respond(json_response(status, format!(r#"{{"status":"{text}"}}"#)))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state
        .metrics
        .queue_depth
        .set(f64::from(state.producer.queue_depth()));
    state
        .metrics
        .buffered_bytes
        .set(state.intake.buffered_bytes() as f64);
    let mut response = (StatusCode::OK, state.metrics.render()).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    state.respond(response)
}

async fn not_found(State(state): State<Arc<AppState>>) -> Response {
    state.respond(ApiError::NotFound.into_response())
}

async fn method_not_allowed(State(state): State<Arc<AppState>>) -> Response {
    state.respond(ApiError::MethodNotAllowed.into_response())
}

async fn ingest(state: &AppState, request: Request, batch: bool) -> Result<Accepted, ApiError> {
    let (parts, body) = request.into_parts();
    let caller = state.keys.check(&parts.headers)?;
    let format = body::format(&parts.headers, batch)?;
    let encoding = body::encoding(&parts.headers)?;
    // Refusing an over-limit key from its headers: with a declared event count its tokens
    // are taken now (and given back if the request fails before the producer); without,
    // the key must have one token left.
    let max_events = if batch {
        state.limits.max_batch_events
    } else {
        1
    };
    let reserved = match auth::declared_events(&parts.headers, max_events)? {
        Some(declared) => Some(state.keys.reserve(&caller, declared)?),
        None => {
            state.keys.has_tokens(&caller)?;
            None
        }
    };
    let mut received = state.intake.receive(&parts.headers, body, encoding).await?;
    let text = client_event::as_text(&received.bytes)?;
    let events = match (batch, format) {
        (false, _) => vec![client_event::parse_single(text, &state.limits)?],
        (true, Format::Json) => client_event::parse_array(text, &state.limits)?,
        (true, Format::Ndjson) => client_event::parse_ndjson(text, &state.limits)?,
    };
    if let Some(reserved) = &reserved
        && reserved.events() != events.len()
    {
        return Err(ApiError::EventCountMismatch {
            declared: reserved.events(),
            actual: events.len(),
        });
    }
    state.intake.hold_events(&mut received.held, events.len())?;
    // With auth on, the source is the key's id: an event naming another is refused whole
    // (403), so one tenant can neither write as another nor replace its rows.
    if let Some(id) = caller.id {
        let other = events
            .iter()
            .position(|e| e.source.as_deref().is_some_and(|s| s != id));
        if let Some(index) = other {
            return Err(ApiError::SourceNotAllowed {
                index: batch.then_some(index),
            });
        }
    }
    match reserved {
        Some(reserved) => reserved.keep(),
        None => state.keys.take(&caller, events.len())?,
    }
    if !state.ready.load(Ordering::Acquire) {
        return Err(ApiError::NotReady {
            retry_after: state.config.retry_after_secs,
        });
    }
    state.intake.admit()?;
    let source = caller.id.unwrap_or("");
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let context = state.client_address.context(peer, &parts.headers);
    produce(state, &events, source, &context, batch).await
}

/// Hands every event to the producer, then waits for the broker's verdict on each.
async fn produce(
    state: &AppState,
    events: &[Event<'_>],
    default_source: &str,
    context: &RequestContext,
    batch: bool,
) -> Result<Accepted, ApiError> {
    produce_each(
        state,
        events.len(),
        batch,
        |i| events[i].id.unwrap_or_else(Uuid::now_v7),
        |i, id, ingest_time, payload| {
            let event = &events[i];
            let wire = WireEvent {
                id,
                kind: Cow::Borrowed(&event.kind),
                source: Cow::Borrowed(event.source.as_deref().unwrap_or(default_source)),
                timestamp: event.timestamp.unwrap_or(ingest_time),
                ingest_time,
                properties: event.properties.unwrap_or(&state.empty_properties),
                user_id: Cow::Borrowed(event.user_id.as_deref().unwrap_or("")),
                anonymous_id: Cow::Borrowed(event.anonymous_id.as_deref().unwrap_or("")),
                context: event.context.unwrap_or(&state.empty_properties),
                ip: Cow::Borrowed(&context.ip),
                user_agent: Cow::Borrowed(&context.user_agent),
            };
            serde_json::to_writer(payload, &wire)
        },
    )
    .await
}

/// Hands `count` events to the producer, then waits for the broker's verdict on each: `id(i)`
/// gives event `i`'s id, `write(i, id, ingest_time, buffer)` its Kafka message value.
pub(crate) async fn produce_each(
    state: &AppState,
    count: usize,
    batch: bool,
    mut id: impl FnMut(usize) -> Uuid,
    mut write: impl FnMut(usize, Uuid, Millis, &mut Vec<u8>) -> serde_json::Result<()>,
) -> Result<Accepted, ApiError> {
    let ingest_time = Millis::now();
    let mut ids = Vec::with_capacity(count);
    let mut deliveries = Vec::with_capacity(count);
    let mut refused = None;
    let mut payload = Vec::with_capacity(256);
    let mut key = Uuid::encode_buffer();
    let started = Instant::now();
    for i in 0..count {
        let id = id(i);
        ids.push(id);
        if refused.is_some() {
            continue;
        }
        payload.clear();
        if write(i, id, ingest_time, &mut payload).is_err() {
            refused = Some(EnqueueError::Refused(rdkafka::error::KafkaError::Canceled));
            continue;
        }
        let key = id.hyphenated().encode_lower(&mut key);
        match state.producer.enqueue(key, &payload, ingest_time.0) {
            Ok(delivery) => deliveries.push(delivery),
            Err(e) => refused = Some(e),
        }
    }
    let sent = deliveries.len();
    let mut outcomes = state.producer.settle(deliveries).await;
    state
        .metrics
        .produce_latency
        .record(started.elapsed().as_secs_f64());
    outcomes.resize(ids.len(), Delivery::NotSent);
    let stored = outcomes.iter().filter(|o| **o == Delivery::Stored).count();
    if stored == ids.len() {
        state.metrics.accepted.increment(stored as u64);
        return Ok(Accepted { ids });
    }
    let retry_after = state.config.retry_after_secs;
    if !batch && sent == 0 {
        return Err(match refused {
            Some(EnqueueError::QueueFull) => ApiError::QueueFull { retry_after },
            _ => ApiError::Unavailable {
                code: "broker_unavailable",
                message: "the producer refused the event".into(),
                retry_after,
                results: None,
            },
        });
    }
    if let (true, Some(EnqueueError::QueueFull), 0) = (batch, &refused, sent) {
        return Err(ApiError::QueueFull { retry_after });
    }
    let timed_out = outcomes.contains(&Delivery::Unknown);
    let (code, message) = if matches!(refused, Some(EnqueueError::QueueFull)) {
        (
            "queue_full",
            "overloaded: the producer queue filled up during the request",
        )
    } else if timed_out {
        (
            "produce_timeout",
            "the broker did not acknowledge in time; events not `stored` may or may not be in Kafka: retry them with the same ids",
        )
    } else {
        (
            "broker_unavailable",
            "the broker did not store the event(s); retry with the same ids",
        )
    };
    Err(ApiError::Unavailable {
        code,
        message: message.into(),
        retry_after,
        results: Some(
            ids.iter()
                .zip(&outcomes)
                .enumerate()
                .map(|(index, (id, outcome))| EventResult {
                    index,
                    id: *id,
                    status: outcome.as_str(),
                })
                .collect(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use ess_core::config::ApiKey;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    /// A state whose broker never answers: everything before the producer is testable.
    fn state() -> Arc<AppState> {
        let mut config = Config::default();
        config.kafka.brokers = "127.0.0.1:1".into();
        config.ingest.api_keys = vec![ApiKey {
            id: "k".into(),
            key: "0123456789abcdef".into(),
            rate_per_sec: 10,
            burst: 10,
        }];
        Arc::new(AppState::new(&config).unwrap())
    }

    async fn call(state: &Arc<AppState>, request: HttpRequest<Body>) -> (u16, serde_json::Value) {
        let response = app(Arc::clone(state)).oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    fn post(path: &str, key: Option<&str>, body: &'static str) -> HttpRequest<Body> {
        let mut builder = HttpRequest::post(path).header("content-type", "application/json");
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        builder.body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn statuses_before_the_broker_answers() {
        let state = state();
        let get = |path: &str| HttpRequest::get(path).body(Body::empty()).unwrap();
        assert_eq!(call(&state, get("/healthz")).await.0, 200);
        let (status, body) = call(&state, get("/readyz")).await;
        assert_eq!((status, body["status"].as_str()), (503, Some("starting")));
        let key = Some("0123456789abcdef");
        let (status, body) = call(&state, post("/v1/events", None, r#"{"type":"a"}"#)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("missing_api_key"))
        );
        let (status, body) = call(&state, post("/v1/events", key, r#"{"type":""}"#)).await;
        assert_eq!((status, body["field"].as_str()), (400, Some("type")));
        let (status, body) = call(&state, post("/v1/events", key, r#"{"type":"a"}"#)).await;
        assert_eq!((status, body["error"].as_str()), (503, Some("not_ready")));
        state.set_ready();
        state.set_draining();
        assert_eq!(call(&state, get("/readyz")).await.1["status"], "draining");
        let metrics = app(Arc::clone(&state))
            .oneshot(get("/metrics"))
            .await
            .unwrap();
        let text = metrics.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.contains("ess_ingest_requests_total{status=\"401\"} 1"),
            "{text}"
        );
    }
}
