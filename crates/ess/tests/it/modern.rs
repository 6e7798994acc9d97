//! Current ClickHouse (26.x, through chDB in-process): the DDL `ess migrate` writes for it is
//! accepted, and the RowBinary the client sends for an [`EventRow`] loads into that table with
//! every value, millisecond times included, intact — and the sink's own encoder writes the same
//! bytes.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use ess_core::schema::EventRow;
use ess_testkit::process::run;

type Captured = Arc<Mutex<Vec<(String, Bytes)>>>;

async fn capture(
    State(captured): State<Captured>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> &'static str {
    if let Ok(mut all) = captured.lock() {
        all.push((query.unwrap_or_default(), body));
    }
    ""
}

/// The bytes the `clickhouse` client sends for `rows`, captured by a local HTTP server.
async fn rowbinary_of(rows: &[EventRow]) -> (String, Bytes) {
    let captured: Captured = Arc::default();
    let app = axum::Router::new()
        .fallback(capture)
        .with_state(captured.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = clickhouse::Client::default()
        .with_url(url)
        .with_validation(false)
        .with_compression(clickhouse::Compression::None);
    let mut insert = client.insert::<EventRow>("events").await.unwrap();
    for row in rows {
        insert.write(row).await.unwrap();
    }
    insert.end().await.unwrap();
    server.abort();
    let all = captured.lock().unwrap();
    all.last()
        .cloned()
        .expect("the insert reached the capture server")
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What every chDB script starts with: a session in `argv[1]` and the statements of the DDL
/// file `argv[2]` run in it, as `s`.
const CHDB_PRELUDE: &str = r#"
import sys
from chdb import session
s = session.Session(sys.argv[1])
for stmt in open(sys.argv[2]).read().split(";\n"):
    if stmt.strip():
        s.query(stmt)
"#;

/// Runs `script` (after [`CHDB_PRELUDE`]) in chDB with a session in `dir`, the DDL in
/// `ddl_path` and further arguments `args`; its stdout.
fn chdb(script: &str, dir: &Path, ddl_path: &Path, args: &[&OsStr]) -> String {
    let out = run(Command::new(repo_root().join("scripts/chdb-python"))
        .arg("-c")
        .arg(format!("{CHDB_PRELUDE}{script}"))
        .arg(dir.join("session"))
        .arg(ddl_path)
        .args(args));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn modern_ddl_and_rowbinary_load_into_current_clickhouse() {
    let rows = vec![
        EventRow {
            id: uuid::Uuid::new_v4(),
            kind: "page_view".into(),
            source: "web".into(),
            event_time: 1_764_000_000_001,
            ingest_time: 1_764_000_000_123,
            store_time: 1_764_000_000_999,
            properties: r#"{"path":"/ü/日本","n":1.5}"#.into(),
            kafka_partition: 3,
            kafka_offset: 41,
            user_id: "użytkownik-7".into(),
            anonymous_id: "anon \"🦀\"".into(),
            ip: "203.0.113.9".into(),
            user_agent: "curl/8.0".into(),
            context: r#"{"page":{"path":"/日本"}}"#.into(),
        },
        EventRow {
            id: uuid::Uuid::new_v4(),
            kind: "чек".into(),
            source: String::new(),
            event_time: 0,
            ingest_time: 253_402_300_799_999,
            store_time: 1,
            properties: "{}".into(),
            kafka_partition: 0,
            kafka_offset: 0,
            context: "{}".into(),
            ..EventRow::default()
        },
    ];
    let (query, body) = rowbinary_of(&rows).await;
    assert!(
        query.contains("RowBinary"),
        "the client inserts RowBinary: {query}"
    );
    // The sink encodes rows by hand; its bytes must be the client's, so what loads below
    // proves the sink's encoding for current servers too.
    let mut by_sink = Vec::new();
    for row in &rows {
        ess_sink::encode::encode_event_row(&mut by_sink, row);
    }
    assert_eq!(
        by_sink,
        body.to_vec(),
        "the sink's RowBinary equals the client's"
    );

    let dir = std::env::temp_dir().join(ess_testkit::unique("chdb"));
    std::fs::create_dir_all(&dir).unwrap();
    let rows_path = dir.join("rows.bin");
    std::fs::write(&rows_path, &body).unwrap();
    let ddl_path = dir.join("ddl.sql");
    std::fs::write(
        &ddl_path,
        modern_ddl(&["clickhouse.cluster=", "clickhouse.database=modern"]),
    )
    .unwrap();

    let script = r#"
s.query(f"INSERT INTO modern.events ({sys.argv[4]}) FROM INFILE '{sys.argv[3]}' FORMAT RowBinary")
print(s.query(
    "SELECT toString(id) AS id, type, source, toUnixTimestamp64Milli(event_time) AS e, "
    "toUnixTimestamp64Milli(ingest_time) AS i, toUnixTimestamp64Milli(store_time) AS s, "
    "properties, kafka_partition, kafka_offset, user_id, anonymous_id, ip, user_agent, "
    "context FROM modern.events ORDER BY kafka_offset DESC "
    "FORMAT JSONEachRow"))
"#;
    let stdout = chdb(
        script,
        &dir,
        &ddl_path,
        &[
            rows_path.as_os_str(),
            OsStr::new(ess_core::schema::COLUMN_NAMES),
        ],
    );
    let back: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(back.len(), rows.len(), "{stdout}");
    for (row, got) in rows.iter().zip(&back) {
        let num = |v: &serde_json::Value| -> i64 {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .unwrap()
        };
        assert_eq!(got["id"], row.id.to_string());
        assert_eq!(got["type"], row.kind);
        assert_eq!(got["source"], row.source);
        assert_eq!(num(&got["e"]), row.event_time);
        assert_eq!(num(&got["i"]), row.ingest_time);
        assert_eq!(num(&got["s"]), row.store_time);
        assert_eq!(got["properties"], row.properties);
        assert_eq!(num(&got["kafka_partition"]), i64::from(row.kafka_partition));
        assert_eq!(num(&got["kafka_offset"]), row.kafka_offset);
        assert_eq!(got["user_id"], row.user_id);
        assert_eq!(got["anonymous_id"], row.anonymous_id);
        assert_eq!(got["ip"], row.ip);
        assert_eq!(got["user_agent"], row.user_agent);
        assert_eq!(got["context"], row.context);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs `ess migrate --print` for a current server with `sets`, returns the DDL text.
fn modern_ddl(sets: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ess"));
    cmd.args(["migrate", "--print", "--server-version", "26.9"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    String::from_utf8(run(&mut cmd).stdout).unwrap()
}

#[test]
fn a_ttl_removes_rows_older_than_it_at_the_final_merge_and_keeps_newer_ones() {
    let dir = std::env::temp_dir().join(ess_testkit::unique("chdb_ttl"));
    std::fs::create_dir_all(&dir).unwrap();
    // The table is made without a TTL and filled; then the TTL `ess migrate` writes for
    // `clickhouse.ttl = "30days"` is put on it (as migrate does for an existing table) and
    // the final merge applies it.
    let ddl_path = dir.join("ddl.sql");
    std::fs::write(
        &ddl_path,
        modern_ddl(&["clickhouse.cluster=", "clickhouse.database=ttl"]),
    )
    .unwrap();
    let with_ttl = modern_ddl(&[
        "clickhouse.cluster=",
        "clickhouse.database=ttl",
        "clickhouse.ttl=\"30days\"",
    ]);
    let ttl = with_ttl
        .split(" TTL ")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .expect("a TTL clause")
        .to_owned();
    let script = r#"
for kind, days in (("old", 45), ("recent", 2), ("today", 0)):
    s.query(
        "INSERT INTO ttl.events (id, type, source, event_time, ingest_time, store_time, "
        "properties, context, kafka_partition, kafka_offset) SELECT generateUUIDv4(), "
        f"'{kind}', 's', now64(3) - INTERVAL {days} DAY, now64(3), now64(3), '{{}}', '{{}}', 0, 0")
print("before:" + ",".join(str(s.query("SELECT type FROM ttl.events ORDER BY type", "CSV")).split()))
s.query("ALTER TABLE ttl.events MODIFY TTL " + sys.argv[3])
s.query("OPTIMIZE TABLE ttl.events FINAL")
print("left:" + ",".join(str(s.query("SELECT type FROM ttl.events ORDER BY type", "CSV")).split()))
"#;
    let stdout = chdb(script, &dir, &ddl_path, &[OsStr::new(&ttl)]);
    assert!(
        stdout.contains(r#"before:"old","recent","today""#),
        "{stdout}"
    );
    let left = stdout
        .lines()
        .find_map(|l| l.strip_prefix("left:"))
        .expect("the script's answer");
    assert_eq!(left, r#""recent","today""#, "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}
