//! What clients see: the 202 body, the error body, and the status of every error.
//!
//! Every error is `{"error": code, "message": text}` plus, where they apply, `index` (the
//! event's position in the batch), `field`, and for a batch the broker could not fully store,
//! `accepted` and `results` (one entry per event: index, id, status).

use std::fmt::Write as _;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::{AuthError, BadEventCount};
use crate::body::BodyError;
use crate::client_event::{EventError, Rejected};
use crate::producer::Delivery;

/// Every event of the request is in Kafka.
#[derive(Debug)]
pub struct Accepted {
    /// The ids, in request order.
    pub ids: Vec<Uuid>,
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let mut body = String::with_capacity(30 + self.ids.len() * 39);
        body.push('{');
        push_accepted(&mut body, &self.ids);
        body.push('}');
        json_response(StatusCode::ACCEPTED, body)
    }
}

/// Appends `"accepted":n,"ids":["…",…]` (the fields every success body has) to a JSON object.
pub(crate) fn push_accepted(body: &mut String, ids: &[Uuid]) {
    let _ = write!(body, "\"accepted\":{},\"ids\":[", ids.len());
    let mut buf = Uuid::encode_buffer();
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push('"');
        body.push_str(id.hyphenated().encode_lower(&mut buf));
        body.push('"');
    }
    body.push(']');
}

/// One event of a batch the broker could not fully store.
#[derive(Debug, Clone, Serialize)]
pub struct EventResult {
    /// Position in the request.
    pub index: usize,
    /// The event id (the client's or the one the server made).
    pub id: Uuid,
    /// `stored`, `failed`, `unknown` or `not_sent`.
    pub status: &'static str,
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An invalid event or batch.
    #[error(transparent)]
    Event(#[from] Rejected),
    /// An unusable body.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// Missing or bad key, or over the key's rate.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// An unusable `X-Event-Count` header.
    #[error(transparent)]
    EventCount(#[from] BadEventCount),
    /// The body holds another number of events than `X-Event-Count` declared.
    #[error("X-Event-Count declared {declared} events but the body holds {actual}")]
    EventCountMismatch {
        /// What the header said.
        declared: usize,
        /// What the body holds.
        actual: usize,
    },
    /// The body could not be read.
    #[error("could not read the request body")]
    BodyRead,
    /// The client took too long to send the body.
    #[error("the request body did not arrive in time")]
    ReadTimeout,
    /// The broker has not answered yet since the server started.
    #[error("not ready: the broker has not answered yet")]
    NotReady {
        /// `Retry-After` seconds.
        retry_after: u32,
    },
    /// The producer queue is full.
    #[error("overloaded: the producer queue is full")]
    QueueFull {
        /// `Retry-After` seconds.
        retry_after: u32,
    },
    /// The byte budget (`max_buffered_bytes`) cannot hold the request now.
    #[error("overloaded: too many request bytes are held; retry later")]
    Overloaded {
        /// `Retry-After` seconds.
        retry_after: u32,
    },
    /// The server is shutting down and takes no new work (the request's events were not
    /// handed to the producer).
    #[error("shutting down: the request was not processed; retry on another instance")]
    ShuttingDown {
        /// `Retry-After` seconds.
        retry_after: u32,
    },
    /// The broker did not acknowledge every event. Those not `stored` may still appear in
    /// Kafka: clients retry with the same ids, and storage deduplicates by id.
    #[error("{message}")]
    Unavailable {
        /// `broker_unavailable` or `produce_timeout`.
        code: &'static str,
        /// Human text.
        message: String,
        /// `Retry-After` seconds.
        retry_after: u32,
        /// Per-event results, for batch requests.
        results: Option<Vec<EventResult>>,
    },
    /// The request is not allowed from where it came (a page's origin, a browser key).
    #[error("{message}")]
    Forbidden {
        /// `origin_not_allowed`, `key_not_public` or `public_key`.
        code: &'static str,
        /// Human text.
        message: String,
    },
    /// An event names a `source` other than the API key's id (auth on).
    #[error("`source` must be the API key's id or absent: a key writes only its own events")]
    SourceNotAllowed {
        /// The event's position in a batch.
        index: Option<usize>,
    },
    /// No such route.
    #[error("no such endpoint")]
    NotFound,
    /// The route exists with another method.
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Event(r) if r.error.is_too_large() => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Event(_) => StatusCode::BAD_REQUEST,
            Self::Body(BodyError::MediaType(..) | BodyError::Encoding(_)) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::Body(BodyError::TooLarge(..)) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Body(BodyError::Corrupt(_))
            | Self::BodyRead
            | Self::EventCount(_)
            | Self::EventCountMismatch { .. } => StatusCode::BAD_REQUEST,
            Self::Auth(AuthError::RateLimited(_)) => StatusCode::TOO_MANY_REQUESTS,
            Self::Auth(_) => StatusCode::UNAUTHORIZED,
            Self::SourceNotAllowed { .. } => StatusCode::FORBIDDEN,
            Self::ReadTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::NotReady { .. }
            | Self::QueueFull { .. }
            | Self::Overloaded { .. }
            | Self::ShuttingDown { .. }
            | Self::Unavailable { .. }
            | Self::Body(BodyError::Overloaded) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Event(r) => r.error.code(),
            Self::Body(BodyError::MediaType(..)) => "unsupported_media_type",
            Self::Body(BodyError::Encoding(_)) => "unsupported_encoding",
            Self::Body(BodyError::TooLarge(..)) => "body_too_large",
            Self::Body(BodyError::Corrupt(_)) => "invalid_encoding",
            Self::Body(BodyError::Overloaded) | Self::Overloaded { .. } => "overloaded",
            Self::ShuttingDown { .. } => "shutting_down",
            Self::Auth(AuthError::Missing) => "missing_api_key",
            Self::Auth(AuthError::Invalid) => "invalid_api_key",
            Self::Auth(AuthError::RateLimited(_)) => "rate_limited",
            Self::BodyRead => "invalid_body",
            Self::EventCount(_) => "invalid_event_count",
            Self::EventCountMismatch { .. } => "event_count_mismatch",
            Self::ReadTimeout => "request_timeout",
            Self::NotReady { .. } => "not_ready",
            Self::QueueFull { .. } => "queue_full",
            Self::Unavailable { code, .. } | Self::Forbidden { code, .. } => code,
            Self::SourceNotAllowed { .. } => "source_not_allowed",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Auth(AuthError::RateLimited(wait)) => {
                Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            }
            Self::NotReady { retry_after }
            | Self::QueueFull { retry_after }
            | Self::Overloaded { retry_after }
            | Self::ShuttingDown { retry_after }
            | Self::Unavailable { retry_after, .. } => Some(u64::from(*retry_after)),
            Self::Body(BodyError::Overloaded) => Some(1),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    /// The code again under the key Segment's SDKs read (Segment routes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    results: Option<&'a [EventResult]>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(false)
    }
}

impl ApiError {
    /// The response on the Segment routes: the same body plus `code`, which Segment's SDKs
    /// read (analytics-python retries a 4xx whose body lacks it).
    pub fn into_segment_response(self) -> Response {
        self.respond(true)
    }

    fn respond(self, segment: bool) -> Response {
        let status = self.status();
        let (index, field) = match &self {
            Self::Event(r) => (r.index, r.error.field()),
            Self::SourceNotAllowed { index } => (*index, Some("source")),
            _ => (None, None),
        };
        let results = match &self {
            Self::Unavailable { results, .. } => results.as_deref(),
            _ => None,
        };
        let body = ErrorBody {
            error: self.code(),
            code: segment.then(|| self.code()),
            message: self.to_string(),
            index,
            field,
            accepted: results.map(|r| {
                r.iter()
                    .filter(|e| e.status == Delivery::Stored.as_str())
                    .count()
            }),
            results,
        };
        let text = serde_json::to_string(&body).unwrap_or_default();
        let mut response = json_response(status, text);
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

impl From<EventError> for ApiError {
    fn from(error: EventError) -> Self {
        Self::Event(Rejected { index: None, error })
    }
}

/// A response with a JSON body.
pub fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
