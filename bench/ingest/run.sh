#!/usr/bin/env bash
# Ingest benchmark: nginx (the ceiling) and `ess ingest` under the same wrk load, one table.
#
# Needs: the stack's broker on 127.0.0.1:9092 (`ess stack up`), wrk, nginx, curl.
# Starts nginx and ess ingest itself, on their own ports, and stops them at the end; creates
# (and deletes) its own topic. Nothing else is touched.
#
# Env: DURATION (s, default 30), CONNECTIONS (default 64), THREADS (wrk, default 2),
#      BATCH_CONNECTIONS (default 16), PARTITIONS (default 8), ESS_BIN, ESS_TANSU,
#      BROKERS (default 127.0.0.1:9092), EXTRA_SET (extra `--set k=v` flags for ingest).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/bench/ingest"
DURATION=${DURATION:-30}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
BATCH_CONNECTIONS=${BATCH_CONNECTIONS:-16}
PARTITIONS=${PARTITIONS:-8}
BROKERS=${BROKERS:-127.0.0.1:9092}
ESS_BIN=${ESS_BIN:-$ROOT/target/release/ess}
ESS_TANSU=${ESS_TANSU:-$HOME/.cache/ess/tansu-calfkit-0.1.2/tansu}
NGINX_PORT=18090
INGEST_PORT=18088
KEY=bench-key-0123456789abcdef
TOPIC="bench.ingest.$(date +%s)"
TMP=$(mktemp -d)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  "$ESS_TANSU" topic delete "$TOPIC" --broker "tcp://$BROKERS" >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

[ -x "$ESS_BIN" ] || (cd "$ROOT" && cargo build --release -p ess)

# nginx, one worker, constant 202.
mkdir -p "$TMP/nginx"
sed "s/127.0.0.1:18090/127.0.0.1:$NGINX_PORT/" "$HERE/nginx.conf" >"$TMP/nginx/nginx.conf"
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e stderr 2>"$TMP/nginx.log" &
PIDS+=($!)

# ess ingest on its own topic.
"$ESS_TANSU" topic create "$TOPIC" --partitions "$PARTITIONS" --broker "tcp://$BROKERS" >/dev/null
cat >"$TMP/ess.toml" <<TOML
[kafka]
brokers = "$BROKERS"
topic = "$TOPIC"

[ingest]
listen = "127.0.0.1:$INGEST_PORT"
auth = "on"
api_keys = [{ id = "bench", key = "$KEY", rate_per_sec = 10000000, burst = 10000000 }]
TOML
# shellcheck disable=SC2086
RUST_LOG=warn "$ESS_BIN" --config "$TMP/ess.toml" ${EXTRA_SET:-} ingest 2>"$TMP/ingest.log" &
INGEST_PID=$!
PIDS+=("$INGEST_PID")

for _ in $(seq 1 100); do
  if curl -fs "http://127.0.0.1:$INGEST_PORT/readyz" >/dev/null 2>&1 &&
    curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/"; then
    break
  fi
  sleep 0.2
done
curl -fs "http://127.0.0.1:$INGEST_PORT/readyz" >/dev/null || {
  echo "ess ingest did not become ready:" >&2
  cat "$TMP/ingest.log" >&2
  exit 1
}

export ESS_BENCH_KEY=$KEY
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)

# run NAME SCRIPT URL CONNECTIONS: runs wrk, keeps its output and the CPU time ingest used,
# prints requests/s.
run() {
  local name=$1 script=$2 url=$3 conns=$4 before
  before=$(cpu_ticks "$INGEST_PID")
  wrk -t"$THREADS" -c"$conns" -d"${DURATION}s" --latency -s "$HERE/$script" "$url" >"$TMP/$name.wrk"
  echo $(($(cpu_ticks "$INGEST_PID") - before)) >"$TMP/$name.cpu"
  awk '/^Requests\/sec/ {print $2}' "$TMP/$name.wrk"
}

# Warm-up (connections, producer batches, page faults).
wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$HERE/event.lua" "http://127.0.0.1:$INGEST_PORT/v1/events" >/dev/null

NGINX_RPS=$(run nginx-ceiling event.lua "http://127.0.0.1:$NGINX_PORT/v1/events" "$CONNECTIONS")
INGEST_RPS=$(run ingest-single event.lua "http://127.0.0.1:$INGEST_PORT/v1/events" "$CONNECTIONS")
run ingest-batch-100 batch.lua "http://127.0.0.1:$INGEST_PORT/v1/events/batch" "$BATCH_CONNECTIONS" >/dev/null
ROWS=()
for name in nginx-ceiling ingest-single ingest-batch-100; do
  f="$TMP/$name.wrk"
  conns=$CONNECTIONS; per=1
  [ "$name" = ingest-batch-100 ] && conns=$BATCH_CONNECTIONS && per=100
  rps=$(awk '/^Requests\/sec/ {print $2}' "$f")
  p50=$(awk '$1 == "50%" {print $2}' "$f")
  p99=$(awk '$1 == "99%" {print $2}' "$f")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$f")
  sockerr=$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' "$f")
  eps=$(awk -v r="$rps" -v n="$per" 'BEGIN {printf "%.0f", r * n}')
  total=$(awk '/requests in/ {print $1}' "$f")
  cpu="-"
  if [ "$name" != nginx-ceiling ]; then
    cpu=$(awk -v t="$(cat "$TMP/$name.cpu")" -v hz="$TICKS" -v r="$total" -v n="$per" \
      'BEGIN {printf "%.1f", t / hz * 1e6 / (r * n)}')
  fi
  ROWS+=("$(printf '%-18s %6s %12s %12s %9s %9s %7s %14s' "$name" "$conns" "$rps" "$eps" "$p50" "$p99" "$((${non2xx:-0} + ${sockerr:-0}))" "$cpu")")
done

ACCEPTED=$(curl -s "http://127.0.0.1:$INGEST_PORT/metrics" | awk '/^ess_ingest_events_accepted_total/ {print $2}')
HWM=$(awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$INGEST_PID/status")
RSS=$(awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$INGEST_PID/status")

echo
echo "ess ingest benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t$THREADS -d${DURATION}s --latency; topic $TOPIC with $PARTITIONS partitions on $BROKERS"
printf '%-18s %6s %12s %12s %9s %9s %7s %14s\n' run conns "requests/s" "events/s" p50 p99 errors "ingest-CPU-µs/ev"
for row in "${ROWS[@]}"; do echo "$row"; done
awk -v i="$INGEST_RPS" -v n="$NGINX_RPS" 'BEGIN {printf "ingest / nginx ceiling (single event): %.2f\n", i / n}'
echo "events acknowledged by ingest (incl. warm-up): $ACCEPTED"
echo "ingest RSS now $RSS, peak $HWM"
