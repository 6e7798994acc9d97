#!/usr/bin/env bash
# Ingest benchmark: nginx (the ceiling) and `ess ingest` under the same wrk load, one table.
#
# Needs: the stack's broker on 127.0.0.1:9092 (`ess stack up`), wrk, nginx, curl.
# Starts nginx and one ess ingest per topic itself, on their own ports, and stops them at the
# end; creates (and deletes) its own topics. Nothing else is touched.
#
# Both runs (single events, batches of 100) are repeated for each partition count in
# PARTITIONS, each on a new topic: librdkafka sends one produce request per partition, so the
# count decides how many events each request carries and how much the broker works per event.
# After each run
# the table shows librdkafka's own view of that producer: events per produce request and the
# broker's median round trip (from ingest's /metrics).
#
# Env: DURATION (s, default 30), CONNECTIONS (default 64), THREADS (wrk, default 2),
#      BATCH_CONNECTIONS (default 16), PARTITIONS (default "8 1": the stack's default topic,
#      then one partition), ESS_BIN, ESS_TANSU, BROKERS (default 127.0.0.1:9092),
#      EXTRA_SET (extra `--set k=v` flags for ingest).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/bench/ingest"
DURATION=${DURATION:-30}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
BATCH_CONNECTIONS=${BATCH_CONNECTIONS:-16}
PARTITIONS=${PARTITIONS:-8 1}
BROKERS=${BROKERS:-127.0.0.1:9092}
ESS_BIN=${ESS_BIN:-$ROOT/target/release/ess}
ESS_TANSU=${ESS_TANSU:-$HOME/.cache/ess/tansu-calfkit-0.1.2/tansu}
NGINX_PORT=18090
INGEST_PORT=18088
KEY=bench-key-0123456789abcdef
TMP=$(mktemp -d)
PIDS=()
TOPICS=()

cleanup() {
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  for topic in "${TOPICS[@]}"; do
    "$ESS_TANSU" topic delete "$topic" --broker "tcp://$BROKERS" >/dev/null 2>&1 || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

[ -x "$ESS_BIN" ] || (cd "$ROOT" && cargo build --release -p ess)

# nginx, one worker, constant 202.
mkdir -p "$TMP/nginx"
sed "s/127.0.0.1:18090/127.0.0.1:$NGINX_PORT/" "$HERE/nginx.conf" >"$TMP/nginx/nginx.conf"
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e stderr 2>"$TMP/nginx.log" &
PIDS+=($!)
for _ in $(seq 1 50); do
  curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && break
  sleep 0.1
done

export ESS_BENCH_KEY=$KEY
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
INGEST_PID=

# start_ingest PARTITIONS: a new topic and an ess ingest on it; sets INGEST_PID.
start_ingest() {
  local topic="bench.ingest.$(date +%s%N).p$1"
  TOPICS+=("$topic")
  "$ESS_TANSU" topic create "$topic" --partitions "$1" --broker "tcp://$BROKERS" >/dev/null
  cat >"$TMP/ess.toml" <<TOML
[kafka]
brokers = "$BROKERS"
topic = "$topic"

[ingest]
listen = "127.0.0.1:$INGEST_PORT"
auth = "on"
api_keys = [{ id = "wrk", key = "$KEY", rate_per_sec = 10000000, burst = 10000000 }]
TOML
  # shellcheck disable=SC2086
  RUST_LOG=warn "$ESS_BIN" --config "$TMP/ess.toml" ${EXTRA_SET:-} ingest 2>"$TMP/ingest.log" &
  INGEST_PID=$!
  PIDS+=("$INGEST_PID")
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$INGEST_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fs "http://127.0.0.1:$INGEST_PORT/readyz" >/dev/null || {
    echo "ess ingest did not become ready:" >&2
    cat "$TMP/ingest.log" >&2
    exit 1
  }
  # Warm-up (connections, producer batches, page faults).
  wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$HERE/event.lua" "http://127.0.0.1:$INGEST_PORT/v1/events" >/dev/null
}

# stop_ingest: stops the current ingest, keeps its counters and memory figures.
stop_ingest() {
  ACCEPTED=$((${ACCEPTED:-0} + $(curl -s "http://127.0.0.1:$INGEST_PORT/metrics" | awk '/^ess_ingest_events_accepted_total/ {print $2}')))
  HWM=$(awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$INGEST_PID/status")
  RSS=$(awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$INGEST_PID/status")
  MEMORY+=("$1: RSS at the end $RSS, peak $HWM")
  kill -TERM "$INGEST_PID"
  wait "$INGEST_PID" || true
}

RATIOS=()

# run NAME SCRIPT URL CONNECTIONS [ingest]: runs wrk, keeps its output, the CPU time ingest used
# and the producer's statistics, prints requests/s.
run() {
  local name=$1 script=$2 url=$3 conns=$4 before=0
  [ -n "${5:-}" ] && before=$(cpu_ticks "$INGEST_PID")
  wrk -t"$THREADS" -c"$conns" -d"${DURATION}s" --latency -s "$HERE/$script" "$url" >"$TMP/$name.wrk"
  if [ -n "${5:-}" ]; then
    echo $(($(cpu_ticks "$INGEST_PID") - before)) >"$TMP/$name.cpu"
    # Statistics arrive every 5 s: wait for a window that lies within the run.
    sleep 5.5
    curl -s "http://127.0.0.1:$INGEST_PORT/metrics" >"$TMP/$name.metrics"
  fi
  awk '/^Requests\/sec/ {print $2}' "$TMP/$name.wrk"
}

NGINX_RPS=$(run nginx-ceiling event.lua "http://127.0.0.1:$NGINX_PORT/v1/events" "$CONNECTIONS")
NAMES=(nginx-ceiling)
MEMORY=()
for parts in $PARTITIONS; do
  start_ingest "$parts"
  rps=$(run "ingest-single-${parts}p" event.lua "http://127.0.0.1:$INGEST_PORT/v1/events" "$CONNECTIONS" ingest)
  NAMES+=("ingest-single-${parts}p")
  RATIOS+=("$(awk -v i="$rps" -v n="$NGINX_RPS" -v p="$parts" 'BEGIN {printf "ingest / nginx ceiling (single event, partitions: %d): %.2f", p, i / n}')")
  stop_ingest "single events, partitions: $parts"
  # The broker slows down as a topic grows: the batch run gets a fresh topic too.
  start_ingest "$parts"
  run "ingest-batch-100-${parts}p" batch.lua "http://127.0.0.1:$INGEST_PORT/v1/events/batch" "$BATCH_CONNECTIONS" ingest >/dev/null
  NAMES+=("ingest-batch-100-${parts}p")
  stop_ingest "batches of 100, partitions: $parts"
done

ROWS=()
for name in "${NAMES[@]}"; do
  f="$TMP/$name.wrk"
  conns=$CONNECTIONS; per=1
  case $name in ingest-batch-*) conns=$BATCH_CONNECTIONS && per=100 ;; esac
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
  batch="-"; rtt="-"
  if [ -f "$TMP/$name.metrics" ]; then
    batch=$(awk '/^ess_ingest_produce_batch_events / {printf "%.0f", $2}' "$TMP/$name.metrics")
    rtt=$(awk '/^ess_ingest_broker_rtt_seconds/ && /quantile="0.5"/ {printf "%.2fms", $2 * 1000}' "$TMP/$name.metrics")
  fi
  ROWS+=("$(printf '%-22s %6s %12s %12s %9s %9s %7s %10s %11s %10s' "$name" "$conns" "$rps" "$eps" "$p50" "$p99" "$((${non2xx:-0} + ${sockerr:-0}))" "$cpu" "${batch:--}" "${rtt:--}")")
done

echo
echo "ess ingest benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t$THREADS -d${DURATION}s --latency; a new topic per partition count ($PARTITIONS) on $BROKERS"
printf '%-22s %6s %12s %12s %9s %9s %7s %10s %11s %10s\n' run conns "requests/s" "events/s" p50 p99 errors "CPU-µs/ev" "events/req" "broker-rtt"
for row in "${ROWS[@]}"; do echo "$row"; done
for ratio in "${RATIOS[@]}"; do echo "$ratio"; done
echo "events acknowledged by ingest (incl. warm-ups): $ACCEPTED"
for memory in "${MEMORY[@]}"; do echo "ingest, $memory"; done
echo "CPU-µs/ev: ingest's CPU time per event; events/req and broker-rtt: librdkafka's average events"
echo "per produce request and median produce round trip over its last 5 s statistics window"
