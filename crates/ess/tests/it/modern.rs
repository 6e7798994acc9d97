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

// ---- `clickhouse.properties = "json"`: ClickHouse's JSON type on current servers ----

/// Runs each statement in one chDB session (current ClickHouse, in-process) under `dir`;
/// returns each one's output, or the server's error text (from its `Code:`).
fn chdb_each(dir: &Path, statements: &[String]) -> Vec<Result<String, String>> {
    let script = r#"
import sys, json
from chdb import session
s = session.Session(sys.argv[1])
for stmt in json.load(open(sys.argv[2])):
    try:
        out = s.query(stmt)
        print(json.dumps({"ok": out.bytes().decode() if hasattr(out, "bytes") else str(out)}))
    except Exception as e:
        text = str(e)
        print(json.dumps({"err": text[text.find("Code:"):] if "Code:" in text else text}))
"#;
    let list = dir.join(format!("statements-{}.json", ess_testkit::unique("s")));
    std::fs::write(&list, serde_json::to_vec(statements).unwrap()).unwrap();
    let out = run(Command::new(repo_root().join("scripts/chdb-python"))
        .arg("-c")
        .arg(script)
        .arg(dir.join("session"))
        .arg(&list));
    let outcomes: Vec<Result<String, String>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| match (&v["ok"], &v["err"]) {
            (serde_json::Value::String(ok), _) => Some(Ok(ok.clone())),
            (_, serde_json::Value::String(err)) => Some(Err(err.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes.len(), statements.len(), "{outcomes:?}");
    outcomes
}

/// The Kafka message of an event with `properties` (as ingest writes it).
fn wire_json(offset: i64, source: &str, properties: &str) -> String {
    format!(
        r#"{{"id":"{}","type":"purchase","source":"{source}","timestamp":"2026-11-24T08:00:00.{:03}Z","ingest_time":"2026-11-24T08:00:01.000Z","properties":{properties}}}"#,
        uuid::Uuid::now_v7(),
        offset % 1000
    )
}

/// The sink's RowBinary of one event read at `offset` of partition 0.
fn sink_rowbinary(out: &mut Vec<u8>, offset: i64, source: &str, properties: &str) {
    let json = wire_json(offset, source, properties);
    let event = ess_core::wire::WireEvent::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("{properties}: {e}"));
    ess_sink::encode::encode_row(out, &event, 1_764_000_000_000, 0, offset);
}

/// `INSERT … FROM INFILE` of the sink's bytes, with the settings the sink's inserts carry
/// for `properties`.
fn insert_sql(table: &str, file: &Path, properties: ess_core::config::Properties) -> String {
    let settings: Vec<String> = ess_sink::encode::insert_settings(properties)
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    let settings = if settings.is_empty() {
        String::new()
    } else {
        format!(" SETTINGS {}", settings.join(", "))
    };
    format!(
        "INSERT INTO {table} ({}) FROM INFILE '{}'{settings} FORMAT RowBinary",
        ess_sink::encode::COLUMNS,
        file.display()
    )
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn statements(ddl: &str) -> Vec<String> {
    ddl.split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn json_properties_load_from_the_sinks_rowbinary_and_read_back_by_path() {
    use ess_core::config::Properties;
    let dir = std::env::temp_dir().join(ess_testkit::unique("chdb_json"));
    std::fs::create_dir_all(&dir).unwrap();
    let ddl = modern_ddl(&[
        "clickhouse.cluster=",
        "clickhouse.database=typed",
        "clickhouse.properties=json",
    ]);
    assert!(ddl.contains("properties JSON,"), "{ddl}");
    let props = [
        r#"{"plan":"pro","amount":12.5,"n":3,"big":12345678901234567890,"user":{"name":"Zoë 日本","address":{"city":"Kraków"}},"tags":["a","ü"],"items":[{"sku":"a1","qty":2},{"sku":"b2","qty":0.5}],"ok":true,"emoji":"🦀 \"quoted\""}"#,
        r#"{"plan":"free","amount":3,"n":-7}"#,
        "{}",
    ];
    let mut block = Vec::new();
    for (i, p) in props.iter().enumerate() {
        sink_rowbinary(&mut block, i as i64, "shop", p);
    }
    let file = dir.join("rows.bin");
    std::fs::write(&file, &block).unwrap();
    let mut sql = statements(&ddl);
    let created = sql.len();
    sql.push(insert_sql("typed.events", &file, Properties::Json));
    sql.push(
        "SELECT kafka_offset, toString(properties) AS p, properties.plan AS plan, \
         properties.amount::Float64 AS amount, properties.n::Int64 AS n, \
         properties.user.name AS name, properties.user.address.city AS city, \
         properties.big::UInt64 AS big, properties.tags AS tags \
         FROM typed.events ORDER BY kafka_offset FORMAT JSONEachRow"
            .into(),
    );
    // The sink's reconciliation reads the rows past a committed offset.
    let from = std::collections::BTreeMap::from([(0, 1)]);
    sql.push(format!(
        "{} FORMAT JSONEachRow",
        ess_sink::reconcile::stored_rows_sql("typed.events", &from)
    ));
    // The same bytes without the sink's setting: the server reads them as its binary JSON
    // encoding and refuses them.
    sql.push(insert_sql("typed.events", &file, Properties::String));
    let out = chdb_each(&dir, &sql);
    for (statement, outcome) in sql.iter().zip(&out).take(created + 1) {
        assert!(outcome.is_ok(), "{statement}: {outcome:?}");
    }
    let rows = json_lines(out[created + 1].as_ref().unwrap());
    assert_eq!(rows.len(), props.len(), "{rows:?}");
    for (row, p) in rows.iter().zip(props) {
        // Every value and key comes back (key order is the type's own).
        let stored: serde_json::Value = serde_json::from_str(row["p"].as_str().unwrap()).unwrap();
        let sent: serde_json::Value = serde_json::from_str(p).unwrap();
        assert_eq!(stored, sent, "{row}");
    }
    assert_eq!(rows[0]["plan"], "pro");
    assert_eq!(rows[0]["amount"], 12.5);
    assert_eq!(rows[0]["n"], 3);
    assert_eq!(rows[0]["name"], "Zoë 日本");
    assert_eq!(rows[0]["city"], "Kraków");
    assert_eq!(rows[0]["big"], 12_345_678_901_234_567_890u64);
    assert_eq!(rows[0]["tags"], serde_json::json!(["a", "ü"]));
    assert_eq!(rows[1]["plan"], "free");
    assert_eq!(rows[1]["amount"].as_f64(), Some(3.0));
    assert_eq!(rows[1]["n"], -7);
    // A path an event lacks reads as NULL, and as the type's default through `::Float64`.
    assert!(rows[2]["plan"].is_null(), "{}", rows[2]);
    assert_eq!(rows[2]["amount"].as_f64(), Some(0.0), "{}", rows[2]);
    let stored = json_lines(out[created + 2].as_ref().unwrap());
    let offsets: Vec<i64> = stored
        .iter()
        .map(|r| r["kafka_offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2], "{stored:?}");
    let refused = out[created + 3].as_ref().unwrap_err();
    assert!(refused.starts_with("Code:"), "{refused}");
    let _ = std::fs::remove_dir_all(dir);
}

/// What the JSON type does with one awkward `properties` (ClickHouse 26.9 through chDB).
enum Expect {
    /// Stored; `toString(properties)` reads back as this JSON.
    Stored(&'static str),
    /// Refused as bad data: the sink dead-letters the event.
    Refused,
}

#[test]
fn awkward_json_properties_are_stored_or_refused_as_bad_data_never_lost() {
    use ess_core::config::Properties;
    use ess_sink::classify::{Disposition, classify};
    let dir = std::env::temp_dir().join(ess_testkit::unique("chdb_awkward"));
    std::fs::create_dir_all(&dir).unwrap();
    let deep = |levels: usize| format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels));
    let (deep32, deep100) = (deep(32), deep(100));
    let cases: Vec<(&str, String, Expect)> = vec![
        (
            "mixed array",
            r#"{"a":[1,"two",{"three":3},null,true,[4.5]]}"#.into(),
            Expect::Stored(r#"{"a":[1,"two",{"three":3},null,true,[4.5]]}"#),
        ),
        (
            "integer beyond 64 bits",
            r#"{"n":123456789012345678901234567890}"#.into(),
            Expect::Stored(r#"{"n":"123456789012345678901234567890"}"#),
        ),
        (
            "float beyond Float64",
            r#"{"x":1e400}"#.into(),
            Expect::Refused,
        ),
        (
            "32 levels (ingest's default limit)",
            deep32.clone(),
            Expect::Stored(""),
        ),
        (
            "100 levels (ingest's highest limit)",
            deep100.clone(),
            Expect::Stored(""),
        ),
        (
            "keys with dots",
            r#"{"utm.source":"news","utm.medium":"mail"}"#.into(),
            Expect::Stored(r#"{"utm":{"medium":"mail","source":"news"}}"#),
        ),
        (
            "a dotted key and the same path nested",
            r#"{"a.b":1,"a":{"b":2}}"#.into(),
            Expect::Refused,
        ),
        ("empty object", "{}".into(), Expect::Stored("{}")),
        (
            "nulls and empty objects",
            r#"{"a":null,"b":[null],"c":{}}"#.into(),
            Expect::Stored(r#"{"b":[null]}"#),
        ),
        ("empty key", r#"{"":1}"#.into(), Expect::Stored(r#"{"":1}"#)),
    ];
    let ddl = modern_ddl(&[
        "clickhouse.cluster=",
        "clickhouse.database=awkward",
        "clickhouse.properties=json",
    ]);
    let mut sql = statements(&ddl);
    let created = sql.len();
    // The whole block first, as the sink sends it; then each row alone, as the sink's split
    // ends up sending the rows of a refused block.
    let mut block = Vec::new();
    let mut rows = Vec::new();
    for (i, (_, props, _)) in cases.iter().enumerate() {
        let mut row = Vec::new();
        sink_rowbinary(&mut row, i as i64, "s", props);
        block.extend_from_slice(&row);
        let file = dir.join(format!("row{i}.bin"));
        std::fs::write(&file, &row).unwrap();
        rows.push((row, file));
    }
    let whole = dir.join("block.bin");
    std::fs::write(&whole, &block).unwrap();
    sql.push(insert_sql("awkward.events", &whole, Properties::Json));
    for (_, file) in &rows {
        sql.push(insert_sql("awkward.events", file, Properties::Json));
    }
    sql.push(
        "SELECT kafka_offset, toString(properties) AS p FROM awkward.events \
         ORDER BY kafka_offset FORMAT JSONEachRow"
            .into(),
    );
    let out = chdb_each(&dir, &sql);
    assert!(out[..created].iter().all(Result::is_ok), "{out:?}");
    let bad = |error: &str| classify(&clickhouse::error::Error::BadResponse(error.to_owned()));
    let block_error = out[created].as_ref().unwrap_err();
    assert_eq!(bad(block_error), Disposition::BadData, "{block_error}");
    let stored: std::collections::BTreeMap<i64, String> =
        json_lines(out.last().unwrap().as_ref().unwrap())
            .into_iter()
            .map(|r| {
                (
                    r["kafka_offset"].as_i64().unwrap(),
                    r["p"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
    for (i, (name, props, expect)) in cases.iter().enumerate() {
        let outcome = &out[created + 1 + i];
        match expect {
            Expect::Stored(back) => {
                assert!(outcome.is_ok(), "{name}: {outcome:?}");
                let want: serde_json::Value =
                    serde_json::from_str(if back.is_empty() { props } else { back }).unwrap();
                let got: serde_json::Value = serde_json::from_str(&stored[&(i as i64)]).unwrap();
                assert_eq!(got, want, "{name}");
            }
            Expect::Refused => {
                let error = outcome.as_ref().unwrap_err();
                assert_eq!(bad(error), Disposition::BadData, "{name}: {error}");
                assert!(!stored.contains_key(&(i as i64)), "{name}");
                // The dead letter carries the event as it was sent.
                let row = ess_sink::encode::decode_row(&rows[i].0).unwrap();
                let letter = ess_sink::encode::row_to_wire_json(&row);
                let event = ess_core::wire::WireEvent::from_json(&letter).unwrap();
                assert_eq!(event.properties.get(), props, "{name}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn migrate_moves_a_string_properties_table_into_json_keeping_every_row() {
    use ess_core::clickhouse::Flavor;
    use ess_core::config::{ClickHouseConfig, Properties};
    use ess_core::migrate::{Step, rebuild};
    use ess_core::schema::{COLUMNS, Schema};
    let dir = std::env::temp_dir().join(ess_testkit::unique("chdb_move"));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = |database: &str, properties| {
        let config = ClickHouseConfig {
            cluster: String::new(),
            database: database.into(),
            properties,
            ..ClickHouseConfig::default()
        };
        Schema::new(&config, Flavor::Modern)
    };
    let columns: Vec<String> = COLUMNS.iter().map(|(n, _)| n.to_string()).collect();
    let shards = vec![vec!["chdb".to_owned()]];
    let mut sql = Vec::new();
    // `moved`: three rows of two sources; `stuck`: one of its rows the JSON type refuses.
    for (db, props) in [
        (
            "moved",
            [
                ("a", r#"{"plan":"pro","amount":1.5}"#),
                ("a", r#"{"plan":"free"}"#),
                ("b", r#"{"plan":"pro","amount":2}"#),
            ],
        ),
        (
            "stuck",
            [
                ("a", r#"{"plan":"pro"}"#),
                ("a", r#"{"a.b":1,"a":{"b":2}}"#),
                ("b", "{}"),
            ],
        ),
    ] {
        sql.extend(schema(db, Properties::String).ddl());
        let mut block = Vec::new();
        for (i, (source, p)) in props.iter().enumerate() {
            sink_rowbinary(&mut block, i as i64, source, p);
        }
        let file = dir.join(format!("{db}.bin"));
        std::fs::write(&file, &block).unwrap();
        sql.push(insert_sql(
            &format!("{db}.events"),
            &file,
            Properties::String,
        ));
    }
    assert!(chdb_each(&dir, &sql).iter().all(Result::is_ok));

    let per_source = |table: &str| {
        format!(
            "SELECT source, count() AS n FROM {table} GROUP BY source ORDER BY source \
             FORMAT JSONEachRow"
        )
    };
    // Runs the move's steps as `ess migrate` would on one server; the first failure stops it.
    let run = |db: &str| -> Result<(), String> {
        let kept = format!("{db}.events_v2_string");
        for step in rebuild(&schema(db, Properties::Json), &columns, &shards, &kept) {
            match step {
                Step::Sql { sql, .. } => chdb_each(&dir, &[sql])[0].clone().map(|_| ())?,
                Step::Check { from, to, .. } => {
                    let out = chdb_each(&dir, &[per_source(&from), per_source(&to)]);
                    assert_eq!(out[0], out[1], "rows per source, old vs new");
                }
                other => panic!("a single server needs no {other}"),
            }
        }
        Ok(())
    };
    run("moved").unwrap();
    let types = |db: &str| {
        format!(
            "SELECT table, type FROM system.columns WHERE database = '{db}' \
             AND name = 'properties' ORDER BY table FORMAT JSONEachRow"
        )
    };
    let out = chdb_each(
        &dir,
        &[
            types("moved"),
            per_source("moved.events"),
            per_source("moved.events_v2_string"),
            "SELECT properties.plan.:String AS plan, count() AS n, \
             sum(properties.amount::Nullable(Float64)) AS amount FROM moved.events \
             GROUP BY plan ORDER BY plan FORMAT JSONEachRow"
                .into(),
        ],
    );
    let out: Vec<Vec<serde_json::Value>> = out
        .iter()
        .map(|o| json_lines(o.as_ref().unwrap()))
        .collect();
    assert_eq!(
        out[0],
        [
            serde_json::json!({"table": "events", "type": "JSON"}),
            serde_json::json!({"table": "events_v2_string", "type": "String"}),
        ]
    );
    let counts = [
        serde_json::json!({"source": "a", "n": 2}),
        serde_json::json!({"source": "b", "n": 1}),
    ];
    assert_eq!(out[1], counts, "every row moved");
    assert_eq!(out[2], counts, "the old table is kept whole");
    assert_eq!(
        out[3],
        [
            serde_json::json!({"plan": "free", "n": 1, "amount": null}),
            serde_json::json!({"plan": "pro", "n": 2, "amount": 3.5}),
        ]
    );

    // A row the JSON type refuses fails the copy; nothing is swapped.
    let error = run("stuck").unwrap_err();
    assert!(error.contains("Duplicate path"), "{error}");
    let out = chdb_each(&dir, &[types("stuck"), per_source("stuck.events")]);
    let out: Vec<Vec<serde_json::Value>> = out
        .iter()
        .map(|o| json_lines(o.as_ref().unwrap()))
        .collect();
    assert_eq!(
        out[0][0],
        serde_json::json!({"table": "events", "type": "String"})
    );
    assert_eq!(
        out[0].len(),
        2,
        "events and the unfinished events_next: {:?}",
        out[0]
    );
    assert_eq!(out[1], counts);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn json_properties_are_refused_by_migrate_on_the_18_16_cluster() {
    let database = ess_testkit::unique("json_refused");
    let topic = ess_testkit::unique("json_refused");
    let out = Command::new(env!("CARGO_BIN_EXE_ess"))
        .arg("migrate")
        .args(["--set", &format!("clickhouse.database={database}")])
        .args(["--set", &format!("kafka.topic={topic}")])
        .args(["--set", &format!("kafka.dlq_topic={topic}_dlq")])
        .args(["--set", "clickhouse.properties=json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let client = clickhouse::Client::default()
        .with_url(ess_testkit::stack_config().clickhouse.url)
        .with_validation(false);
    let version: String = client.query("SELECT version()").fetch_one().await.unwrap();
    assert!(stderr.contains("`clickhouse.properties"), "{stderr}");
    assert!(
        stderr.contains(&format!("this server is {version}")),
        "{stderr}"
    );
    let databases: u64 = client
        .query("SELECT count() FROM system.databases WHERE name = ?")
        .bind(&database)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(databases, 0, "nothing was created");
}

#[tokio::test]
async fn a_sink_configured_for_json_properties_refuses_to_start_on_a_string_table() {
    let eph = ess_testkit::Ephemeral::new(1).await;
    let mut config = eph.config.clone();
    config.clickhouse.properties = ess_core::config::Properties::Json;
    config.sink.listen = "127.0.0.1:0".into();
    let started = ess_sink::start(config, std::future::pending()).await;
    let err = format!("{:#}", started.expect_err("the sink refuses to start"));
    assert!(
        err.contains("`clickhouse.properties`") && err.contains("as String"),
        "{err}"
    );
    eph.cleanup().await;
}
