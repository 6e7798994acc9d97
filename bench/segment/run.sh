#!/usr/bin/env bash
# Segment batch vs native batch, one `ess ingest`, same run: wrk posts batches of 100 events to
# /v1/events/batch (bench/ingest/batch.lua) and the same events in the Segment batch shape to
# /v1/batch (bench/segment/batch.lua), alternating ROUNDS times, and prints events/s of each.
#
# Needs: the stack's broker on 127.0.0.1:9092, wrk, curl, the tansu binary (for the topic).
# The key id is "wrk", the `source` bench/ingest/batch.lua names (a key writes only its own source).
# Env: DURATION (s per run, default 20), ROUNDS (default 2), CONNECTIONS (default 16),
#      ESS_BIN, ESS_TANSU, BROKERS, PORT (default 29088).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-16}
BROKERS=${BROKERS:-127.0.0.1:9092}
PORT=${PORT:-29088}
ESS_BIN=${ESS_BIN:-$ROOT/target/release/ess}
ESS_TANSU=${ESS_TANSU:-$HOME/.cache/ess/tansu-calfkit-0.1.2/tansu}
KEY=bench-key-0123456789abcdef
TOPIC="bench.segment.$(date +%s)"
TMP=$(mktemp -d)
PID=""
cleanup() {
  [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  "$ESS_TANSU" topic delete "$TOPIC" --broker "tcp://$BROKERS" >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
[ -x "$ESS_BIN" ] || (cd "$ROOT" && cargo build --release -p ess)
"$ESS_TANSU" topic create "$TOPIC" --partitions 8 --broker "tcp://$BROKERS" >/dev/null
cat >"$TMP/ess.toml" <<TOML
[kafka]
brokers = "$BROKERS"
topic = "$TOPIC"

[ingest]
listen = "127.0.0.1:$PORT"
auth = "on"
api_keys = [{ id = "wrk", key = "$KEY", rate_per_sec = 100000000, burst = 100000000 }]
TOML
RUST_LOG=warn "$ESS_BIN" --config "$TMP/ess.toml" ingest >"$TMP/ingest.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/readyz")" = 200 ] && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null || { cat "$TMP/ingest.log" >&2; exit 1; }
# Warm-up.
ESS_BENCH_KEY=$KEY wrk -t2 -c"$CONNECTIONS" -d3s -s "$ROOT/bench/ingest/batch.lua" \
  "http://127.0.0.1:$PORT/v1/events/batch" >/dev/null
run() { # name path script
  local out
  out=$(ESS_BENCH_KEY=$KEY wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -s "$3" "http://127.0.0.1:$PORT$2")
  local rps non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  printf '| %s | %s | %.0f | %s |\n' "$1" "$2" "$(echo "$rps * 100" | bc)" "${non2xx:-0}"
}
echo "| run | path | events/s | non-2xx |"
echo "|---|---|---|---|"
for _ in $(seq 1 "$ROUNDS"); do
  run native /v1/events/batch "$ROOT/bench/ingest/batch.lua"
  run segment /v1/batch "$ROOT/bench/segment/batch.lua"
done
