//! Browsers: which pages may send events (`ingest.cors`), preflight answers, and the browser-key
//! rule.
//!
//! A request with an `Origin` header comes from a web page. It is served only when the origin is
//! one of `ingest.cors.allowed_origins` (exact match), and then only with a browser key
//! (`ingest.cors.public_keys`); its response carries `Access-Control-Allow-Origin` for that
//! origin. A request without `Origin` (a server SDK, curl) must not use a browser key. The check
//! is on the server, not only in the browser: a `sendBeacon` or a `text/plain` POST from any page
//! reaches the server without a preflight, and is refused here with 403.

use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ORIGIN, VARY,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ess_core::config::CorsConfig;

use crate::api::ApiError;

/// Request headers pages may send (what analytics.js sends, plus ess's own).
const ALLOWED_HEADERS: &str =
    "content-type, authorization, x-retry-count, content-encoding, x-api-key";

/// The allowed origins.
#[derive(Debug)]
pub struct Cors {
    origins: Vec<String>,
    max_age: HeaderValue,
}

/// Where a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    /// No `Origin` header: not a web page.
    Server,
    /// A page of this allowed origin.
    Page(HeaderValue),
}

impl Cors {
    /// From `[ingest.cors]`.
    pub fn new(config: &CorsConfig) -> Self {
        Self {
            origins: config.allowed_origins.clone(),
            max_age: HeaderValue::from(config.max_age.as_secs()),
        }
    }

    /// Where the request comes from; a page of an origin not allowed is refused.
    pub fn check(&self, headers: &HeaderMap) -> Result<From, ApiError> {
        let Some(origin) = headers.get(ORIGIN) else {
            return Ok(From::Server);
        };
        let text = origin.to_str().unwrap_or("");
        if self.origins.iter().any(|o| o == text) {
            Ok(From::Page(origin.clone()))
        } else {
            Err(ApiError::Forbidden {
                code: "origin_not_allowed",
                message: format!(
                    "pages of origin {text:?} may not send events (see ingest.cors.allowed_origins)"
                ),
            })
        }
    }

    /// The answer to an `OPTIONS` preflight.
    pub fn preflight(&self, headers: &HeaderMap) -> Response {
        match self.check(headers) {
            Ok(From::Page(origin)) => {
                let mut response = StatusCode::NO_CONTENT.into_response();
                let h = response.headers_mut();
                h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                h.insert(
                    ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("POST, OPTIONS"),
                );
                h.insert(
                    ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static(ALLOWED_HEADERS),
                );
                h.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
                h.insert(VARY, HeaderValue::from_static("Origin"));
                response
            }
            Ok(From::Server) => ApiError::Forbidden {
                code: "origin_not_allowed",
                message: "a preflight needs an Origin header".into(),
            }
            .into_segment_response(),
            Err(e) => e.into_segment_response(),
        }
    }
}

/// Adds `Access-Control-Allow-Origin` for a page's request to its response.
pub fn allow(response: &mut Response, from: &From) {
    if let From::Page(origin) = from {
        let h = response.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cors() -> Cors {
        Cors::new(&CorsConfig {
            allowed_origins: vec!["https://shop.example".into()],
            public_keys: vec![],
            max_age: Duration::from_secs(60),
        })
    }

    fn origin(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn only_listed_origins_pass() {
        let c = cors();
        assert_eq!(c.check(&HeaderMap::new()).unwrap(), From::Server);
        assert!(matches!(
            c.check(&origin("https://shop.example")),
            Ok(From::Page(_))
        ));
        for other in [
            "https://shop.example:8443",
            "http://shop.example",
            "null",
            "https://evil.example",
        ] {
            let mut h = HeaderMap::new();
            h.insert(ORIGIN, HeaderValue::from_str(other).unwrap());
            assert_eq!(
                c.check(&h).unwrap_err().code(),
                "origin_not_allowed",
                "{other}"
            );
        }
    }

    #[test]
    fn preflight_answers() {
        let c = cors();
        let ok = c.preflight(&origin("https://shop.example"));
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            ok.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://shop.example"
        );
        assert!(
            ok.headers()[ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap()
                .contains("authorization")
        );
        let refused = c.preflight(&origin("https://evil.example"));
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(refused.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }
}
