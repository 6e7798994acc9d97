#!/usr/bin/env bash
# The analyst's first queries (docs/queries.md) on the first layout (ORDER BY id, table v1) and
# the current one (ORDER BY (source, type, event_date, id), table v2): N rows (default 10 M)
# spread evenly over the 30 days of November 2025, 10 tenants, 8 event types, 200,000 users,
# both tables merged to one part. Prints rows read, bytes read and time of every query from
# system.query_log. Uses (and drops first) the database tbl_bench on CLICKHOUSE_URL.
#   bench/table/queries.sh            # http://127.0.0.1:8123, 10 M rows: ~5 min on 2 cores
set -u
URL=${CLICKHOUSE_URL:-http://127.0.0.1:8123}
Q(){ curl -sS "$URL/?log_queries=1&max_threads=2" --data-binary "$1"; }
N=${N:-10000000}
Q "DROP DATABASE IF EXISTS tbl_bench"
Q "CREATE DATABASE tbl_bench"
COLS="id UUID, type String, source String, user_id String, anonymous_id String, ip String, user_agent String, context String, event_time UInt64, ingest_time UInt64, store_time UInt64, properties String, kafka_partition Int32, kafka_offset Int64"
Q "CREATE TABLE tbl_bench.v1 ($COLS, event_date Date MATERIALIZED toDate(toDateTime(intDiv(event_time, 1000), 'UTC'))) ENGINE = ReplacingMergeTree(ingest_time) PARTITION BY toYYYYMM(toDateTime(intDiv(event_time, 1000))) ORDER BY id"
Q "CREATE TABLE tbl_bench.v2 ($COLS, event_date Date MATERIALIZED toDate(toDateTime(intDiv(event_time, 1000), 'UTC'))) ENGINE = ReplacingMergeTree(ingest_time) PARTITION BY toYYYYMM(event_date) ORDER BY (source, type, event_date, id)"
T0=$(date +%s)
Q "INSERT INTO tbl_bench.v1 (id, type, source, user_id, event_time, ingest_time, store_time, properties, context, kafka_partition, kafka_offset) SELECT generateUUIDv4(), ['page_view','page_view','page_view','click','click','signup','purchase','search'][number % 8 + 1], concat('tenant', toString(intDiv(number, 8) % 10)), concat('u', toString(cityHash64(number) % 200000)), 1761955200000 + intDiv(number * 2592000000, $N), 1761955200000 + intDiv(number * 2592000000, $N), 1761955200000 + intDiv(number * 2592000000, $N), '{\"path\":\"/\"}', '{}', toInt32(number % 8), toInt64(intDiv(number, 8)) FROM system.numbers LIMIT $N"
T1=$(date +%s)
Q "INSERT INTO tbl_bench.v2 SELECT * FROM tbl_bench.v1"
T2=$(date +%s)
echo "insert v1 $((T1-T0)) s, copy to v2 $((T2-T1)) s"
Q "OPTIMIZE TABLE tbl_bench.v1 FINAL"; Q "OPTIMIZE TABLE tbl_bench.v2 FINAL"
Q "SELECT table, count() parts, sum(rows) FROM system.parts WHERE database='tbl_bench' AND active GROUP BY table ORDER BY table"
out=$(mktemp -d)
run(){ # name sql-template
  for t in v1 v2; do
    qid="bench_${1}_${t}_$RANDOM"
    sql=${2//TABLE/tbl_bench.$t}
    curl -sS "$URL/?log_queries=1&max_threads=2&query_id=$qid" --data-binary "$sql" > "$out/$1.$t"
    echo "$1 $t $qid $(head -c 200 "$out/$1.$t" | tr '\n' ' ')"
  done
}
run count "SELECT count() FROM TABLE WHERE source = 'tenant3' AND type = 'signup' AND event_date = '2025-11-15'"
run hourly "SELECT toStartOfHour(toDateTime(intDiv(event_time, 1000))) AS hour, type, count() FROM TABLE WHERE source = 'tenant3' AND event_date BETWEEN '2025-11-10' AND '2025-11-16' GROUP BY hour, type ORDER BY hour, type FORMAT Null"
run dau "SELECT event_date, uniq(user_id) FROM TABLE WHERE source = 'tenant3' AND event_date BETWEEN '2025-11-01' AND '2025-11-30' GROUP BY event_date ORDER BY event_date FORMAT Null"
run funnel "SELECT count() FROM (SELECT user_id, minIf(event_time, type = 'signup') AS s, minIf(event_time, type = 'purchase') AS p FROM TABLE WHERE source = 'tenant3' AND type IN ('signup', 'purchase') AND event_date BETWEEN '2025-11-01' AND '2025-11-07' GROUP BY user_id HAVING s > 0 AND p > s)"
run user "SELECT type, event_time, properties FROM TABLE WHERE source = 'tenant3' AND user_id = 'u4242' ORDER BY event_time DESC LIMIT 20 FORMAT Null"
run reconcile "SELECT kafka_partition, kafka_offset, id FROM TABLE PREWHERE kafka_offset >= 1249000 WHERE (kafka_partition = 0 AND kafka_offset >= 1249000) OR (kafka_partition = 1 AND kafka_offset >= 1249500) FORMAT Null"
run reconcile_nopre "SELECT kafka_partition, kafka_offset, id FROM TABLE WHERE (kafka_partition = 0 AND kafka_offset >= 1249000) OR (kafka_partition = 1 AND kafka_offset >= 1249500) FORMAT Null"
sleep 1
Q "SYSTEM FLUSH LOGS"
Q "SELECT query_id, read_rows, formatReadableSize(read_bytes), query_duration_ms FROM system.query_log WHERE type = 2 AND query_id LIKE 'bench_%' AND event_date >= today() - 1 ORDER BY event_time"
