//! Current ClickHouse (26.x in-process through chDB, `scripts/chdb-python`): it refuses a block
//! touching more than `max_partitions_per_insert_block` (100) months with the error the sink
//! splits on, and takes the blocks the sink splits such a part into.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ess_core::clickhouse::Flavor;
use ess_core::config::ClickHouseConfig;
use ess_core::schema::Schema;
use ess_core::wire::WireEvent;
use ess_sink::batch::{BatchLimits, Builder};
use ess_sink::classify::{Disposition, classify};

use crate::support::event_json_at;

#[test]
fn current_clickhouse_refuses_a_block_over_130_months_and_takes_the_sinks_split() {
    // 1,300 rows over 130 months, encoded by the sink's own builder.
    let mut builder = Builder::new(
        BatchLimits {
            rows: 100_000,
            bytes: 1 << 24,
            max_wait: Duration::from_secs(1),
        },
        None,
    );
    let now = Instant::now();
    for i in 0..1_300u64 {
        let t = 1_420_070_400_000 + (i % 130) as i64 * 31 * 86_400_000 + i as i64;
        let (_, json) = event_json_at(i, "backfill", t);
        let event = WireEvent::from_json(&json).expect("event");
        builder.push_event(&event, 0, i as i64, now);
    }
    let batch = builder.seal(1_764_000_000_000, 1).expect("a batch");
    let whole = &batch.parts[0];
    let blocks = whole.by_months(ess_core::config::SinkConfig::default().max_partitions_per_insert);
    assert_eq!(blocks.len(), 3);

    let dir = std::env::temp_dir().join(ess_testkit::unique("chdb-split"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("whole.bin"), &whole.data).expect("write");
    for (i, block) in blocks.iter().enumerate() {
        std::fs::write(dir.join(format!("block{i}.bin")), &block.data).expect("write");
    }
    let config = ClickHouseConfig {
        cluster: String::new(),
        database: "modern".into(),
        ..ClickHouseConfig::default()
    };
    std::fs::write(
        dir.join("ddl.sql"),
        Schema::new(&config, Flavor::Modern).ddl().join(";\n"),
    )
    .expect("ddl");
    let script = r#"
import sys, os
from chdb import session
d = sys.argv[1]
s = session.Session(os.path.join(d, "session"))
for stmt in open(os.path.join(d, "ddl.sql")).read().split(";\n"):
    if stmt.strip():
        s.query(stmt)
s.query("SET max_partitions_per_insert_block = 100")
cols = sys.argv[2]
def load(name):
    s.query(f"INSERT INTO modern.events ({cols}) FROM INFILE '{os.path.join(d, name)}' FORMAT RowBinary")
try:
    load("whole.bin")
    print("WHOLE accepted")
except Exception as e:
    print("WHOLE refused:", str(e).replace("\n", " "))
for name in sorted(f for f in os.listdir(d) if f.startswith("block")):
    load(name)
print("STORED", s.query("SELECT count(), uniqExact(toYYYYMM(event_time)) FROM modern.events FORMAT CSV").bytes().decode().strip())
"#;
    let out = Command::new(repo_root().join("scripts/chdb-python"))
        .arg("-c")
        .arg(script)
        .arg(&dir)
        .arg(ess_sink::encode::COLUMNS)
        .output()
        .expect("chdb-python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chDB failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WHOLE refused: "))
        .unwrap_or_else(|| panic!("the whole block must be refused: {stdout}"));
    let error = refused[refused.find("Code:").unwrap_or(0)..].to_owned();
    assert_eq!(
        classify(&clickhouse::error::Error::BadResponse(error.clone())),
        Disposition::Split,
        "{error}"
    );
    let stored = stdout
        .lines()
        .find_map(|l| l.strip_prefix("STORED "))
        .expect("counts");
    assert_eq!(
        stored, "1300,130",
        "every row of every month, from the split blocks"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}
