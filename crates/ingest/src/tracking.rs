//! The Segment-compatible routes: what Segment's SDKs post, as they post it.
//!
//! A request goes: origin (a page's must be allowed, see [`crate::cors`]) → media type
//! (`application/json`, or `text/plain` as the browser SDK and `sendBeacon` send it) → body
//! (capped, decompressed) → calls ([`crate::segment`]) → write key (HTTP Basic user, a Bearer or
//! `X-API-Key` header, or `writeKey` in the body) → browser-key rule → rate limit → enrichment
//! (ip, user agent, GeoIP) → producer → the broker's verdict on every event → `200
//! {"success":true,…}`, or an error with the JSON body of ess's own API plus `code`.
//!
//! Segment's SDKs count any 2xx as delivered (analytics-python only 200), drop on 400/401/403/413
//! and retry 408, 429 (after `Retry-After`) and 5xx, which is what ess answers for the same cases.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use ess_core::config::{AuthMode, IngestConfig};
use ess_core::wire::{Millis, WireEvent};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::api::{ApiError, json_response, push_accepted};
use crate::body::{self, BodyError};
use crate::client_event;
use crate::cors::{self, Cors, From};
use crate::geoip::GeoIp;
use crate::router::{AppState, produce_each};
use crate::segment::{self, Call, Message, Route, SizeLimits};

/// Every Segment route and what it takes.
pub const ROUTES: &[(&str, Route)] = &[
    ("/v1/track", Route::Single(Call::Track)),
    ("/v1/page", Route::Single(Call::Page)),
    ("/v1/screen", Route::Single(Call::Screen)),
    ("/v1/identify", Route::Single(Call::Identify)),
    ("/v1/group", Route::Single(Call::Group)),
    ("/v1/alias", Route::Single(Call::Alias)),
    ("/v1/batch", Route::Batch),
    ("/v1/import", Route::Batch),
    // analytics-next (the browser SDK): the call's first letter, and `b` for its batches.
    ("/v1/t", Route::Single(Call::Track)),
    ("/v1/p", Route::Single(Call::Page)),
    ("/v1/s", Route::Single(Call::Screen)),
    ("/v1/i", Route::Single(Call::Identify)),
    ("/v1/g", Route::Single(Call::Group)),
    ("/v1/a", Route::Single(Call::Alias)),
    ("/v1/b", Route::Batch),
];

/// What the Segment routes add to the shared state.
#[derive(Debug)]
pub struct Tracking {
    cors: Cors,
    geoip: Option<GeoIp>,
    sizes: SizeLimits,
}

impl Tracking {
    /// From `[ingest]`; opens `ingest.geoip_db` when set.
    pub fn new(config: &IngestConfig) -> Result<Self, String> {
        Ok(Self {
            cors: Cors::new(&config.cors),
            geoip: config.geoip_db.as_deref().map(GeoIp::open).transpose()?,
            sizes: SizeLimits {
                max_event_bytes: config.segment.max_event_bytes,
                max_batch_bytes: config.segment.max_batch_bytes,
            },
        })
    }
}

/// The Segment routes, each with its preflight.
pub fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for &(path, route) in ROUTES {
        router = router.route(
            path,
            post(
                move |State(state): State<Arc<AppState>>, request: Request| async move {
                    handle(&state, request, route).await
                },
            )
            .options(
                |State(state): State<Arc<AppState>>, request: Request| async move {
                    let response = state.tracking.cors.preflight(request.headers());
                    state.respond(response)
                },
            ),
        );
    }
    router
}

async fn handle(state: &AppState, request: Request, route: Route) -> Response {
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let from = match state.tracking.cors.check(&parts.headers) {
        Ok(from) => from,
        Err(e) => return state.respond(e.into_segment_response()),
    };
    let mut response = match ingest(state, &parts.headers, peer, body, route, &from).await {
        Ok(ids) => success(&ids),
        Err(e) => e.into_segment_response(),
    };
    cors::allow(&mut response, &from);
    state.respond(response)
}

/// `application/json` (or `+json`), or `text/plain` holding JSON.
fn media_type(headers: &HeaderMap) -> Result<(), BodyError> {
    let raw = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || essence == "text/plain"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(BodyError::MediaType(raw.to_owned(), " or text/plain"))
    }
}

async fn ingest(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    body: axum::body::Body,
    route: Route,
    from: &From,
) -> Result<Vec<Uuid>, ApiError> {
    media_type(headers)?;
    let encoding = body::encoding(headers)?;
    let basic = crate::auth::basic_user(headers);
    let header_key = basic
        .as_deref()
        .or_else(|| crate::auth::presented_key(headers));
    // A known key out of tokens is refused from the headers, before its body is read (a key
    // given only in the body is checked once the body is parsed).
    let header_caller = header_key.map(|key| state.keys.check_presented(Some(key)));
    if let Some(Ok(caller)) = &header_caller {
        state.keys.has_tokens(caller)?;
    }
    let mut received_body = state.intake.receive(headers, body, encoding).await?;
    let text = client_event::as_text(&received_body.bytes)?;
    let received = Millis::now();
    let parsed = segment::parse(text, route, &state.limits, &state.tracking.sizes, received)?;
    let caller = match header_caller {
        Some(checked) => checked?,
        None => state
            .keys
            .check_presented(parsed.write_key.as_deref().map(str::as_bytes))?,
    };
    if state.config.auth == AuthMode::On {
        match (from, state.keys.is_public(&caller)) {
            (From::Page(_), false) => {
                return Err(ApiError::Forbidden {
                    code: "key_not_public",
                    message: "pages must use a browser key (ingest.cors.public_keys); this key is for servers".into(),
                });
            }
            (From::Server, true) => {
                return Err(ApiError::Forbidden {
                    code: "public_key",
                    message: "a browser key is accepted only from pages of an allowed origin"
                        .into(),
                });
            }
            _ => {}
        }
    }
    let messages = parsed.messages;
    state
        .intake
        .hold_events(&mut received_body.held, messages.len())?;
    state.keys.take(&caller, messages.len())?;
    if !state.ready.load(Ordering::Acquire) {
        return Err(ApiError::NotReady {
            retry_after: state.config.retry_after_secs,
        });
    }
    state.intake.admit()?;
    let source = caller.id.unwrap_or("");
    let client = state.client_address.client_ip(peer, headers);
    let header_agent = state.client_address.context(peer, headers).user_agent;
    let enriched = enrich(state, &messages, client);
    let accepted = produce_each(
        state,
        messages.len(),
        route == Route::Batch,
        |i| messages[i].id(source),
        |i, id, ingest_time, payload| {
            let m: &Message<'_> = &messages[i];
            let (ip, context) = &enriched[i];
            let wire = WireEvent {
                id,
                kind: Cow::Borrowed(&m.kind),
                source: Cow::Borrowed(source),
                timestamp: m.timestamp,
                ingest_time,
                properties: &m.properties,
                user_id: Cow::Borrowed(m.user_id.as_deref().unwrap_or("")),
                anonymous_id: Cow::Borrowed(m.anonymous_id.as_deref().unwrap_or("")),
                context: context
                    .as_deref()
                    .or(m.context.as_deref())
                    .unwrap_or_else(ess_core::wire::empty_object),
                ip: Cow::Borrowed(ip.as_str()),
                user_agent: Cow::Borrowed(m.context_user_agent.as_deref().unwrap_or(&header_agent)),
            };
            serde_json::to_writer(payload, &wire)
        },
    )
    .await?;
    Ok(accepted.ids)
}

/// Per call: the ip to store (the call's `context.ip`, else the client's by the trusted-proxy
/// rule; anonymized as configured, after the lookup) and, with GeoIP, the context with
/// `location` filled in.
fn enrich(
    state: &AppState,
    messages: &[Message<'_>],
    client: Option<IpAddr>,
) -> Vec<(String, Option<Box<RawValue>>)> {
    messages
        .iter()
        .map(|m| {
            let ip = m.context_ip.or(client);
            let context = match (&state.tracking.geoip, ip) {
                (Some(geo), Some(ip)) => geo
                    .location(ip)
                    .and_then(|location| with_location(m.context.as_deref(), location)),
                _ => None,
            };
            let stored = ip
                .map(|ip| state.client_address.store_form(ip).to_string())
                .unwrap_or_default();
            (stored, context)
        })
        .collect()
}

/// `context` with `location` filled from the lookup; what the client gave itself wins.
fn with_location(context: Option<&RawValue>, found: Map<String, Value>) -> Option<Box<RawValue>> {
    let mut map: Map<String, Value> = match context {
        Some(c) => serde_json::from_str(c.get()).ok()?,
        None => Map::new(),
    };
    let location = map
        .entry("location")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(location) = location {
        for (key, value) in found {
            location.entry(key).or_insert(value);
        }
    }
    RawValue::from_string(serde_json::to_string(&map).ok()?).ok()
}

/// `200 {"success":true,"accepted":n,"ids":[…]}`: every call is in Kafka.
fn success(ids: &[Uuid]) -> Response {
    let mut body = String::with_capacity(40 + ids.len() * 39);
    body.push_str("{\"success\":true,");
    push_accepted(&mut body, ids);
    body.push('}');
    json_response(StatusCode::OK, body)
}
