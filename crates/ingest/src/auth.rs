//! API keys and their rate limits.
//!
//! Keys are compared as SHA-256 digests with a constant-time equality over every configured key,
//! so neither the position of the first differing byte nor the key's length nor which key
//! matched shows in the response time. Each key has a token bucket counted in events.
//!
//! A request may declare its event count in [`EVENT_COUNT`]; its tokens are then reserved
//! from the headers, before the body is read ([`Keys::reserve`]), and given back if the
//! request fails before its events go to the producer.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use ess_core::config::{ApiKey, AuthMode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The header in which a client declares how many events its body holds.
pub const EVENT_COUNT: &str = "x-event-count";

/// The configured keys.
#[derive(Debug)]
pub struct Keys {
    mode: AuthMode,
    keys: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    digest: [u8; 32],
    id: String,
    bucket: Bucket,
    public: bool,
}

/// A key that passed the check.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The key's id (`None` when auth is off).
    pub id: Option<&'a str>,
    index: Option<usize>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No key was sent.
    #[error("missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")]
    Missing,
    /// The key is not configured.
    #[error("invalid API key")]
    Invalid,
    /// Over the key's rate; retry after the duration.
    #[error("rate limit exceeded for this API key")]
    RateLimited(Duration),
}

impl Keys {
    /// Builds the key table.
    pub fn new(mode: AuthMode, keys: &[ApiKey]) -> Self {
        Self {
            mode,
            keys: keys
                .iter()
                .map(|k| Entry {
                    digest: Sha256::digest(k.key.as_bytes()).into(),
                    id: k.id.clone(),
                    bucket: Bucket::new(k.rate_per_sec, k.burst),
                    public: false,
                })
                .collect(),
        }
    }

    /// Checks the request's key.
    pub fn check(&self, headers: &HeaderMap) -> Result<Caller<'_>, AuthError> {
        self.check_presented(presented_key(headers))
    }

    /// Marks the keys with these ids as browser keys (`ingest.cors.public_keys`).
    pub fn mark_public(&mut self, ids: &[String]) {
        for entry in &mut self.keys {
            entry.public = ids.contains(&entry.id);
        }
    }

    /// Whether the caller's key is a browser key.
    pub fn is_public(&self, caller: &Caller<'_>) -> bool {
        caller
            .index
            .and_then(|i| self.keys.get(i))
            .is_some_and(|e| e.public)
    }

    /// Checks a key however it was presented (header, HTTP Basic user, request body).
    pub fn check_presented(&self, presented: Option<&[u8]>) -> Result<Caller<'_>, AuthError> {
        if self.mode == AuthMode::Off {
            return Ok(Caller {
                id: None,
                index: None,
            });
        }
        let presented = presented.ok_or(AuthError::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (i, entry) in self.keys.iter().enumerate() {
            // Every key is compared, whichever matches.
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        let index = found.ok_or(AuthError::Invalid)?;
        Ok(Caller {
            id: Some(&self.keys[index].id),
            index: Some(index),
        })
    }

    /// Whether the caller's bucket has a token left: refuses, from the headers alone, a
    /// request that could not pass whatever its body holds. Takes nothing.
    pub fn has_tokens(&self, caller: &Caller<'_>) -> Result<(), AuthError> {
        match caller.index.and_then(|i| self.keys.get(i)) {
            Some(entry) => entry
                .bucket
                .peek(Instant::now())
                .map_err(AuthError::RateLimited),
            None => Ok(()),
        }
    }

    /// Takes `events` tokens from the caller's bucket.
    pub fn take(&self, caller: &Caller<'_>, events: usize) -> Result<(), AuthError> {
        match caller.index.and_then(|i| self.keys.get(i)) {
            Some(entry) => entry
                .bucket
                .take(events as f64, Instant::now())
                .map_err(AuthError::RateLimited),
            None => Ok(()),
        }
    }
}

/// Tokens taken from a key's bucket for a request's declared events: given back on drop
/// unless [`Reserved::keep`] was called (the events went to the producer).
#[derive(Debug)]
pub struct Reserved<'a> {
    bucket: Option<&'a Bucket>,
    events: usize,
}

impl Reserved<'_> {
    /// The number of events the tokens are for.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Keeps the tokens taken: the request is going to the producer.
    pub fn keep(mut self) {
        self.bucket = None;
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(bucket) = self.bucket {
            bucket.give_back(self.events as f64, Instant::now());
        }
    }
}

impl Keys {
    /// Takes `events` tokens from the caller's bucket now, for a request that declared its
    /// event count: refused (429) from the headers when they are not there. The tokens come
    /// back when the returned reservation is dropped without [`Reserved::keep`].
    pub fn reserve(&self, caller: &Caller<'_>, events: usize) -> Result<Reserved<'_>, AuthError> {
        let bucket = caller
            .index
            .and_then(|i| self.keys.get(i))
            .map(|e| &e.bucket);
        if let Some(bucket) = bucket {
            bucket
                .take(events as f64, Instant::now())
                .map_err(AuthError::RateLimited)?;
        }
        Ok(Reserved { bucket, events })
    }
}

/// Why an `X-Event-Count` header cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("X-Event-Count must be a whole number from 1 to {max}, given once; got {got:?}")]
pub struct BadEventCount {
    /// What was sent.
    pub got: String,
    /// The largest count allowed (`max_batch_events`, or 1 for a single event).
    pub max: usize,
}

/// The event count the request declares in [`EVENT_COUNT`], if any: a whole number from 1 to
/// `max`, given once.
pub fn declared_events(headers: &HeaderMap, max: usize) -> Result<Option<usize>, BadEventCount> {
    let mut values = headers.get_all(EVENT_COUNT).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    let bad = || BadEventCount {
        got: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        max,
    };
    if values.next().is_some() || text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
        _ => Err(bad()),
    }
}

/// The key of a `Bearer` or `X-API-Key` header.
pub fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get("x-api-key") {
        let key = value.as_bytes().trim_ascii();
        return (!key.is_empty()).then_some(key);
    }
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let key = rest.trim_ascii();
    (!key.is_empty()).then_some(key)
}

/// The user of `Authorization: Basic base64(user:password)` (a Segment write key; the password
/// is ignored), when that is how the request authenticates.
pub fn basic_user(headers: &HeaderMap) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let user = match decoded.iter().position(|b| *b == b':') {
        Some(colon) => decoded[..colon].to_vec(),
        None => decoded,
    };
    (!user.is_empty()).then_some(user)
}

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    /// The locked state and the tokens there are at `now` (refilled since the last change,
    /// up to the burst); the caller stores what it takes.
    fn refilled(&self, now: Instant) -> (MutexGuard<'_, (f64, Instant)>, f64) {
        let state = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (tokens, last) = *state;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        (state, (tokens + elapsed * self.rate).min(self.burst))
    }

    /// Whether one token is there, or how long until there will be one; takes nothing.
    fn peek(&self, now: Instant) -> Result<(), Duration> {
        let tokens = self.refilled(now).1;
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }

    /// Gives `n` tokens back (up to the burst).
    fn give_back(&self, n: f64, now: Instant) {
        let (mut state, tokens) = self.refilled(now);
        *state = ((tokens + n).min(self.burst), now);
    }

    /// Takes `n` tokens, or says how long until there will be enough.
    fn take(&self, n: f64, now: Instant) -> Result<(), Duration> {
        let (mut state, tokens) = self.refilled(now);
        if tokens >= n {
            *state = (tokens - n, now);
            Ok(())
        } else {
            *state = (tokens, now);
            // More than the burst can never pass; tell the client to come back in a while.
            let missing = (n.min(self.burst) - tokens).max(0.0);
            Err(Duration::from_secs_f64(missing / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn key(id: &str, key: &str, rate: u32, burst: u32) -> ApiKey {
        ApiKey {
            id: id.into(),
            key: key.into(),
            rate_per_sec: rate,
            burst,
        }
    }

    #[test]
    fn bearer_and_header_keys() {
        let keys = Keys::new(
            AuthMode::On,
            &[
                key("a", "aaaaaaaaaaaaaaaa", 10, 10),
                key("b", "bbbbbbbbbbbbbbbb", 10, 10),
            ],
        );
        let mut h = HeaderMap::new();
        assert_eq!(keys.check(&h).unwrap_err(), AuthError::Missing);
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer bbbbbbbbbbbbbbbb"),
        );
        assert_eq!(keys.check(&h).unwrap().id, Some("b"));
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("bearer wrong-key-xxxxxxx"),
        );
        assert_eq!(keys.check(&h).unwrap_err(), AuthError::Invalid);
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic aaaaaaaaaaaaaaaa"),
        );
        assert_eq!(keys.check(&h).unwrap_err(), AuthError::Missing);
        h.insert("x-api-key", HeaderValue::from_static("aaaaaaaaaaaaaaaa"));
        assert_eq!(keys.check(&h).unwrap().id, Some("a"));
    }

    #[test]
    fn auth_off_lets_everyone_in() {
        let keys = Keys::new(AuthMode::Off, &[]);
        let caller = keys.check(&HeaderMap::new()).unwrap();
        assert_eq!(caller.id, None);
        assert!(keys.take(&caller, 1_000_000).is_ok());
    }

    #[test]
    fn bucket_refills_at_the_rate() {
        let bucket = Bucket::new(10, 20);
        let t0 = Instant::now();
        assert!(bucket.take(20.0, t0).is_ok());
        let wait = bucket.take(5.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        assert!(bucket.take(5.0, t0 + Duration::from_millis(500)).is_ok());
        assert!(bucket.take(1.0, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn a_reservation_dropped_gives_its_tokens_back_and_a_kept_one_does_not() {
        let keys = Keys::new(AuthMode::On, &[key("a", "aaaaaaaaaaaaaaaa", 1, 10)]);
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("aaaaaaaaaaaaaaaa"));
        let caller = keys.check(&h).unwrap();
        let first = keys.reserve(&caller, 6).unwrap();
        assert!(matches!(
            keys.reserve(&caller, 6),
            Err(AuthError::RateLimited(_))
        ));
        drop(first);
        let second = keys.reserve(&caller, 6).unwrap();
        second.keep();
        assert!(keys.reserve(&caller, 6).is_err());
        assert!(keys.reserve(&caller, 4).is_ok());
    }

    #[test]
    fn declared_event_counts() {
        let declared = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(EVENT_COUNT, HeaderValue::from_static(v));
            declared_events(&h, 100)
        };
        assert_eq!(declared_events(&HeaderMap::new(), 100), Ok(None));
        assert_eq!(declared("7"), Ok(Some(7)));
        assert_eq!(declared(" 100 "), Ok(Some(100)));
        for bad in [
            "0",
            "101",
            "-1",
            "+3",
            "1.5",
            "",
            "x",
            "99999999999999999999999",
        ] {
            assert!(declared(bad).is_err(), "{bad:?}");
        }
        let mut twice = HeaderMap::new();
        twice.append(EVENT_COUNT, HeaderValue::from_static("1"));
        twice.append(EVENT_COUNT, HeaderValue::from_static("1"));
        assert!(declared_events(&twice, 100).is_err());
    }

    #[test]
    fn peeking_takes_nothing() {
        let bucket = Bucket::new(10, 2);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(bucket.peek(t0).is_ok());
        }
        assert!(bucket.take(2.0, t0).is_ok());
        let wait = bucket.peek(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(bucket.peek(t0 + Duration::from_millis(100)).is_ok());
    }
}
