//! Bad inputs: each gets its exact status and error code, and nothing reaches Kafka.

use std::io::Write as _;

use bytes::Bytes;
use ess_testkit::Ephemeral;

use crate::harness::{Case, KEY, SLOW_KEY, Server, assert_refused, assert_topic_holds, with_keys};

fn json(name: &'static str, body: impl Into<Bytes>, status: u16, code: &'static str) -> Case {
    let headers = vec![
        ("x-api-key", KEY.into()),
        ("content-type", "application/json".into()),
    ];
    Case::post(name, "/v1/events", headers, body, status, code)
}

fn batch(name: &'static str, body: impl Into<Bytes>, status: u16, code: &'static str) -> Case {
    Case {
        path: "/v1/events/batch",
        ..json(name, body, status, code)
    }
}

fn nested(depth: usize) -> String {
    format!(
        r#"{{"type":"a","properties":{}1{}}}"#,
        r#"{"k":"#.repeat(depth),
        "}".repeat(depth)
    )
}

fn gzip(data: &[u8]) -> Bytes {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).expect("compress");
    Bytes::from(gz.finish().expect("compress"))
}

fn cases() -> Vec<Case> {
    let event = r#"{"type":"a"}"#;
    let many: Vec<&str> = vec![event; 1001];
    vec![
        json("truncated JSON", r#"{"type":"#, 400, "invalid_json"),
        json("not JSON", "hello", 400, "invalid_json"),
        json("empty body", "", 400, "invalid_json"),
        json("trailing garbage", r#"{"type":"a"} x"#, 400, "invalid_json"),
        json(
            "array to the single endpoint",
            r#"[{"type":"a"}]"#,
            400,
            "invalid_event",
        ),
        json("a string, not an object", r#""a""#, 400, "invalid_event"),
        json("missing type", r#"{"properties":{}}"#, 400, "missing_field"),
        json("type is a number", r#"{"type":5}"#, 400, "invalid_field"),
        json("type is null", r#"{"type":null}"#, 400, "invalid_field"),
        json("type is empty", r#"{"type":""}"#, 400, "invalid_field"),
        json(
            "type too long",
            format!(r#"{{"type":"{}"}}"#, "t".repeat(129)),
            400,
            "invalid_field",
        ),
        json(
            "type with a control character",
            r#"{"type":"a\u0000b"}"#,
            400,
            "invalid_field",
        ),
        json(
            "type with a lone surrogate",
            r#"{"type":"\ud800"}"#,
            400,
            "invalid_json",
        ),
        json(
            "source is empty",
            r#"{"type":"a","source":""}"#,
            400,
            "invalid_field",
        ),
        json(
            "id is not a UUID",
            r#"{"id":"nope","type":"a"}"#,
            400,
            "invalid_field",
        ),
        json(
            "id is a number",
            r#"{"id":7,"type":"a"}"#,
            400,
            "invalid_field",
        ),
        json(
            "id is the nil UUID",
            r#"{"id":"00000000-0000-0000-0000-000000000000","type":"a"}"#,
            400,
            "invalid_field",
        ),
        json(
            "timestamp not RFC 3339",
            r#"{"type":"a","timestamp":"24/11/2026"}"#,
            400,
            "invalid_field",
        ),
        json(
            "timestamp before 1970",
            r#"{"type":"a","timestamp":-1}"#,
            400,
            "invalid_field",
        ),
        json(
            "timestamp as a float",
            r#"{"type":"a","timestamp":1.5}"#,
            400,
            "invalid_field",
        ),
        json(
            "properties is an array",
            r#"{"type":"a","properties":[1]}"#,
            400,
            "invalid_field",
        ),
        json(
            "properties is a string",
            r#"{"type":"a","properties":"x"}"#,
            400,
            "invalid_field",
        ),
        json(
            "unknown top-level key",
            r#"{"type":"a","user":1}"#,
            400,
            "unknown_field",
        ),
        json(
            "duplicate top-level key",
            r#"{"type":"a","type":"b"}"#,
            400,
            "duplicate_key",
        ),
        json(
            "duplicate key in properties",
            r#"{"type":"a","properties":{"x":{"k":1,"k":2}}}"#,
            400,
            "duplicate_key",
        ),
        json(
            "duplicate key among many",
            format!(
                r#"{{"type":"a","properties":{{{}"k5":0}}}}"#,
                (0..40).map(|i| format!(r#""k{i}":0,"#)).collect::<String>()
            ),
            400,
            "duplicate_key",
        ),
        // Every event is valid, the one at the nesting limit included; the batch is refused
        // only by the rate limit, which comes after validation (too_deep otherwise).
        batch(
            "nesting at the limit is fine",
            format!("[{},{event},{event},{event}]", nested(8)),
            429,
            "rate_limited",
        )
        .header("x-api-key", SLOW_KEY),
        json("nesting one level too deep", nested(9), 400, "too_deep"),
        json(
            "nesting 100000 levels deep",
            nested(100_000),
            400,
            "too_deep",
        ),
        json(
            "huge property",
            format!(
                r#"{{"type":"a","properties":{{"x":"{}"}}}}"#,
                "x".repeat(20_000)
            ),
            413,
            "properties_too_large",
        ),
        json(
            "NaN",
            r#"{"type":"a","properties":{"x":NaN}}"#,
            400,
            "invalid_json",
        ),
        json(
            "Infinity",
            r#"{"type":"a","properties":{"x":Infinity}}"#,
            400,
            "invalid_json",
        ),
        json(
            "invalid UTF-8",
            &b"{\"type\":\"a\xff\"}"[..],
            400,
            "invalid_utf8",
        ),
        json(
            "body over the limit",
            format!(
                r#"{{"type":"a","properties":{{"x":"{}"}}}}"#,
                "x".repeat(2 << 20)
            ),
            413,
            "body_too_large",
        ),
        json(
            "gzip bomb",
            gzip(&vec![b' '; 64 << 20]),
            413,
            "body_too_large",
        )
        .header("content-encoding", "gzip"),
        json("corrupt gzip", "not gzip at all", 400, "invalid_encoding")
            .header("content-encoding", "gzip"),
        json("unsupported encoding", event, 415, "unsupported_encoding")
            .header("content-encoding", "br"),
        json("wrong content type", event, 415, "unsupported_media_type")
            .header("content-type", "text/plain"),
        json("no content type", event, 415, "unsupported_media_type").without("content-type"),
        json(
            "NDJSON to the single endpoint",
            event,
            415,
            "unsupported_media_type",
        )
        .header("content-type", "application/x-ndjson"),
        json("missing API key", event, 401, "missing_api_key").without("x-api-key"),
        json("wrong API key", event, 401, "invalid_api_key")
            .header("x-api-key", "wrong-key-0123456789abcdef"),
        json("malformed Authorization", event, 401, "missing_api_key")
            .without("x-api-key")
            .header("authorization", "Basic abc"),
        batch("empty batch", "[]", 400, "empty_batch"),
        batch("empty NDJSON batch", "\n\n", 400, "empty_batch")
            .header("content-type", "application/x-ndjson"),
        batch(
            "batch over the limit",
            format!("[{}]", many.join(",")),
            413,
            "batch_too_large",
        ),
        batch("batch is an object", event, 400, "invalid_batch"),
        batch(
            "batch with a bad event",
            r#"[{"type":"a"},{"type":"b"},{"typ":"c"}]"#,
            400,
            "unknown_field",
        )
        .at(2),
        batch(
            "NDJSON with a bad line",
            "{\"type\":\"a\"}\n{\"type\":\n",
            400,
            "invalid_json",
        )
        .header("content-type", "application/x-ndjson")
        .at(1),
        batch(
            "over the key's rate",
            r#"[{"type":"a"},{"type":"a"},{"type":"a"},{"type":"a"}]"#,
            429,
            "rate_limited",
        )
        .header("x-api-key", SLOW_KEY),
        Case {
            path: "/v1/nothing",
            ..json("unknown path", event, 404, "not_found")
        },
        Case {
            method: "GET",
            ..json("GET on a POST endpoint", "", 405, "method_not_allowed")
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_their_exact_status_and_code() {
    let eph = Ephemeral::new(1).await;
    let config = with_keys(eph.config.clone());
    let (server, client) = Server::ready(config.clone()).await;
    let cases = cases();
    assert!(cases.len() >= 25);
    assert_refused(&client, &cases, |case, reply, _| {
        !matches!(case.status, 429 | 503) || reply.headers.contains_key("retry-after")
    })
    .await;
    // Nothing of it reached Kafka; a valid event still does.
    let ids = client.post("/v1/events", r#"{"type":"ok"}"#).await.ids();
    assert_topic_holds(&config, &ids).await;
    server.stop().await;
    eph.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_request_costs_no_rate_limit_tokens() {
    let eph = Ephemeral::new(1).await;
    let config = with_keys(eph.config.clone());
    let (server, client) = Server::ready(config.clone()).await;
    let send = |body: &'static str| {
        let client = client.clone();
        async move {
            client
                .send(
                    "POST",
                    "/v1/events/batch",
                    &[
                        ("x-api-key", SLOW_KEY),
                        ("content-type", "application/json"),
                    ],
                    Bytes::from_static(body.as_bytes()),
                )
                .await
        }
    };
    // SLOW_KEY: a burst of 3 events, 1 more per second.
    for _ in 0..5 {
        let reply = send(r#"[{"type":"a"},{"type":"a"},{"typ":"a"}]"#).await;
        assert_eq!(reply.status, 400, "{:?}", reply.body);
        let reply = send(r#"[{"type":"a"},"#).await;
        assert_eq!(reply.status, 400, "{:?}", reply.body);
    }
    // The whole burst is still there.
    let reply = send(r#"[{"type":"a"},{"type":"a"},{"type":"a"}]"#).await;
    let ids = reply.ids();
    assert_eq!(ids.len(), 3);
    assert_topic_holds(&config, &ids).await;
    server.stop().await;
    eph.cleanup().await;
}
