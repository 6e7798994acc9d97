"""`properties` as JSON text (String) vs ClickHouse's JSON type, on current ClickHouse (chDB).

N events (default 1,000,000) whose properties look like `ess load`'s plus a plan and an amount,
in two tables that differ only in the `properties` column's type (the DDL `ess migrate` writes,
single server). Prints the insert time, the bytes on disk after a final merge, and rows read,
bytes read and the best of three times of the same questions asked both ways.

    N=1000000 scripts/chdb-python bench/table/properties.py
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from chdb import session

N = int(os.environ.get("N", "1000000"))
ESS = os.environ.get("ESS_BIN", "target/release/ess")
work = tempfile.mkdtemp(prefix="ess-props-")
s = session.Session(os.path.join(work, "session"))


def ddl(database, properties):
    out = subprocess.run(
        [ESS, "migrate", "--print", "--server-version", "26.9",
         "--set", "clickhouse.cluster=", "--set", f"clickhouse.database={database}",
         "--set", f"clickhouse.properties={properties}"],
        check=True, capture_output=True, text=True).stdout
    return [x for x in out.split(";\n") if x.strip()]


GENERATED = (
    "SELECT generateUUIDv4(), 'purchase', concat('tenant', toString(number % 10)), "
    "now64(3) - toIntervalSecond(number % 2592000), now64(3), now64(3), "
    "concat('{\"seq\":', toString(number), ',\"session\":\"', hex(cityHash64(number)), "
    "'\",\"user\":\"u', toString(cityHash64(number) % 200000), '\",\"path\":\"/p/', "
    "toString(number % 50), '\",\"plan\":\"', ['free','pro','team'][number % 3 + 1], "
    "'\",\"amount\":', toString(round((number % 1000) / 7, 2)), '}'), '{}', 0, number "
    f"FROM numbers({N})"
)
COLS = "id, type, source, event_time, ingest_time, store_time, properties, context, kafka_partition, kafka_offset"

for db, kind in (("as_string", "string"), ("as_json", "json")):
    for stmt in ddl(db, kind):
        s.query(stmt)
    t = time.time()
    s.query(f"INSERT INTO {db}.events ({COLS}) {GENERATED}")
    took = time.time() - t
    s.query(f"OPTIMIZE TABLE {db}.events FINAL")
    size = s.query(
        f"SELECT sum(bytes_on_disk), sum(rows) FROM system.parts WHERE database = '{db}' "
        "AND table = 'events' AND active", "TSV").bytes().decode().split()
    print(f"{kind:6}: insert {N:,} rows {took:.1f} s, on disk {int(size[0]) / 2**20:.1f} MiB")

QUESTIONS = [
    ("revenue by plan (two paths)",
     "SELECT JSONExtractString(properties, 'plan') AS plan, count(), "
     "sum(JSONExtractFloat(properties, 'amount')) FROM as_string.events GROUP BY plan ORDER BY plan",
     "SELECT properties.plan::String AS plan, count(), sum(properties.amount::Float64) "
     "FROM as_json.events GROUP BY plan ORDER BY plan"),
    ("one path filtered, one tenant",
     "SELECT count() FROM as_string.events WHERE source = 'tenant3' "
     "AND JSONExtractString(properties, 'path') = '/p/13'",
     "SELECT count() FROM as_json.events WHERE source = 'tenant3' "
     "AND properties.path::String = '/p/13'"),
    ("whole properties of every row",
     "SELECT sum(cityHash64(properties)) > 0 FROM as_string.events",
     "SELECT sum(cityHash64(toString(properties))) > 0 FROM as_json.events"),
]
print(f"{'question':34} {'type':6} {'rows read':>11} {'bytes read':>11} {'time':>8}  result")
for name, as_string, as_json in QUESTIONS:
    for kind, sql in (("string", as_string), ("json", as_json)):
        best = None
        for _ in range(3):
            # FORMAT JSON carries the server's own counters of what the query read.
            r = json.loads(s.query(sql, "JSONCompact").bytes())
            if best is None or r["statistics"]["elapsed"] < best["statistics"]["elapsed"]:
                best = r
        stats = best["statistics"]
        result = " | ".join(",".join(str(v) for v in row) for row in best["data"])
        print(f"{name:34} {kind:6} {stats['rows_read']:>11,} "
              f"{stats['bytes_read'] / 2**20:>9.1f} MiB {stats['elapsed'] * 1000:>6.0f} ms  {result[:60]}")
print("a row both ways:")
print(" ", s.query("SELECT properties FROM as_string.events WHERE kafka_offset = 12345", "TSVRaw").bytes().decode().strip())
print(" ", s.query("SELECT toString(properties) FROM as_json.events WHERE kafka_offset = 12345", "TSVRaw").bytes().decode().strip())
shutil.rmtree(work, ignore_errors=True)
