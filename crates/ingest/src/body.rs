//! Request bodies: media types, content encodings, and decompression with a hard cap.
//!
//! Compressed bodies are stream-decoded into a buffer that stops one byte past the limit, so a
//! gzip bomb costs at most `max_body_bytes + 1` bytes of memory and is answered 413. The
//! buffer grows only as far as the request's share of the byte budget does.

use std::io::Read;

use axum::http::HeaderMap;
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use bytes::Bytes;

use crate::budget::Held;

/// How the events in a body are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json` (or `+json`).
    Json,
    /// `application/x-ndjson` (also `application/jsonl`): one event per line.
    Ndjson,
}

/// How the body is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Not compressed.
    Identity,
    /// `gzip` (or `x-gzip`).
    Gzip,
    /// `zstd`.
    Zstd,
}

/// Why a body cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// No or an unsupported `Content-Type`.
    #[error("unsupported Content-Type {0:?}; use application/json{1}")]
    MediaType(String, &'static str),
    /// An unsupported `Content-Encoding`.
    #[error("unsupported Content-Encoding {0:?}; use gzip, zstd or none")]
    Encoding(String),
    /// More bytes than allowed (before or after decompression).
    #[error("the body is larger than {0} bytes{1}")]
    TooLarge(usize, &'static str),
    /// The compressed data is corrupt.
    #[error("the body is not valid {0} data")]
    Corrupt(&'static str),
    /// The byte budget cannot hold the decompressed body now.
    #[error("overloaded: too many request bytes are held; retry later")]
    Overloaded,
}

/// Reads `Content-Type`; `ndjson_ok` says whether NDJSON is allowed on this endpoint.
pub fn format(headers: &HeaderMap, ndjson_ok: bool) -> Result<Format, BodyError> {
    let hint = if ndjson_ok {
        " or application/x-ndjson"
    } else {
        ""
    };
    let raw = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = raw.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") || {
        let lower = essence.to_ascii_lowercase();
        lower.starts_with("application/") && lower.ends_with("+json")
    } {
        return Ok(Format::Json);
    }
    if ndjson_ok
        && [
            "application/x-ndjson",
            "application/ndjson",
            "application/jsonl",
        ]
        .iter()
        .any(|t| essence.eq_ignore_ascii_case(t))
    {
        return Ok(Format::Ndjson);
    }
    Err(BodyError::MediaType(raw.to_owned(), hint))
}

/// Reads `Content-Encoding`.
pub fn encoding(headers: &HeaderMap) -> Result<Encoding, BodyError> {
    let mut values = headers.get_all(CONTENT_ENCODING).iter();
    let Some(value) = values.next() else {
        return Ok(Encoding::Identity);
    };
    let text = value.to_str().unwrap_or("").trim();
    if values.next().is_some() || text.contains(',') {
        return Err(BodyError::Encoding(text.to_owned()));
    }
    match text.to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        _ => Err(BodyError::Encoding(text.to_owned())),
    }
}

/// Decodes `data` into at most `limit` bytes, growing `held` by the bytes it allocates.
pub fn decode(
    data: Bytes,
    encoding: Encoding,
    limit: usize,
    held: &mut Held,
) -> Result<Bytes, BodyError> {
    let out = match encoding {
        Encoding::Identity => return Ok(data),
        Encoding::Gzip => read_capped(
            flate2::read::MultiGzDecoder::new(&data[..]),
            limit,
            held,
            "gzip",
        )?,
        Encoding::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(&data[..])
                .map_err(|_| BodyError::Corrupt("zstd"))?;
            read_capped(decoder, limit, held, "zstd")?
        }
    };
    if out.len() > limit {
        return Err(BodyError::TooLarge(limit, " after decompression"));
    }
    Ok(Bytes::from(out))
}

/// The first allocation for decoded bytes.
const FIRST_DECODE_BYTES: usize = 16 * 1024;

/// Reads until the end or one byte past `limit`; every allocation is taken from `held` first.
fn read_capped(
    mut reader: impl Read,
    limit: usize,
    held: &mut Held,
    name: &'static str,
) -> Result<Vec<u8>, BodyError> {
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while out.len() <= limit {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n.min(limit + 1 - out.len()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(BodyError::Corrupt(name)),
        };
        if out.len() + n > out.capacity() {
            let want = (out.capacity() * 2)
                .max(out.len() + n)
                .max(FIRST_DECODE_BYTES)
                .min(limit + 1);
            if !held.grow(want - out.capacity()) {
                return Err(BodyError::Overloaded);
            }
            out.reserve_exact(want - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use axum::http::HeaderValue;

    use super::*;
    use crate::budget::Budget;

    fn held() -> Held {
        Budget::new(usize::MAX).hold(0).unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn media_types() {
        let ok = |ct| format(&headers(&[("content-type", ct)]), true);
        assert_eq!(ok("application/json"), Ok(Format::Json));
        assert_eq!(ok("Application/JSON; charset=utf-8"), Ok(Format::Json));
        assert_eq!(ok("application/vnd.ess+json"), Ok(Format::Json));
        assert_eq!(ok("application/x-ndjson"), Ok(Format::Ndjson));
        assert!(ok("text/plain").is_err());
        assert!(format(&headers(&[]), true).is_err());
        assert!(format(&headers(&[("content-type", "application/x-ndjson")]), false).is_err());
    }

    #[test]
    fn encodings() {
        let enc = |ce| encoding(&headers(&[("content-encoding", ce)]));
        assert_eq!(encoding(&headers(&[])), Ok(Encoding::Identity));
        assert_eq!(enc("gzip"), Ok(Encoding::Gzip));
        assert_eq!(enc("ZSTD"), Ok(Encoding::Zstd));
        assert!(enc("br").is_err());
        assert!(enc("gzip, zstd").is_err());
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b' '; 50 << 20]).unwrap();
        let bomb = Bytes::from(gz.finish().unwrap());
        assert!(bomb.len() < 100 << 10);
        let mut held = held();
        assert_eq!(
            decode(bomb.clone(), Encoding::Gzip, 1 << 20, &mut held),
            Err(BodyError::TooLarge(1 << 20, " after decompression"))
        );
        // What was allocated is what the budget was charged, at most the limit + 1.
        assert!(held.bytes() <= (1 << 20) + 1, "{}", held.bytes());
        // A budget smaller than what the body decodes to refuses it.
        let budget = Budget::new(256 * 1024);
        let mut small = budget.hold(0).unwrap();
        assert_eq!(
            decode(bomb, Encoding::Gzip, 1 << 20, &mut small),
            Err(BodyError::Overloaded)
        );
        assert!(budget.used() <= 256 * 1024);
    }

    #[test]
    fn zstd_round_trip_and_corrupt_data() {
        let packed = zstd::encode_all(&b"{\"type\":\"a\"}"[..], 3).unwrap();
        let out = decode(Bytes::from(packed), Encoding::Zstd, 100, &mut held()).unwrap();
        assert_eq!(&out[..], b"{\"type\":\"a\"}");
        assert_eq!(
            decode(
                Bytes::from_static(b"not gzip"),
                Encoding::Gzip,
                100,
                &mut held()
            ),
            Err(BodyError::Corrupt("gzip"))
        );
    }
}
