#!/usr/bin/env bash
# `ess demo` on a broker started fresh, with the broker's CPU and memory:
#
#   bench/broker/demo.sh CONFIG wheel|durable [demo args, e.g. --events 1000000]
#
# CONFIG names a stack of its own (ports, state dir). Its broker is stopped, its data removed
# (`<state_dir>/broker`) and the stack brought up with the given build; ClickHouse keeps
# running. The demo gets a topic and database of its own. Prints one line: mean and first /
# last minute requests/s, HTTP and end-to-end latency, stored / unique / accepted, the broker's
# CPU-seconds and average core share over the run, its RSS at the end and its peak.
set -euo pipefail
config=$1
build=$2
shift 2
cd "$(dirname "$0")/../.."
ess="./target/release/ess -c $config"
state=$($ess config | sed -n '/^\[stack\]/,/^\[/s/^state_dir = "\(.*\)"/\1/p')
name="demo$(date +%s)"
out=$(mktemp -d "/tmp/$name.XXXX")

$ess stack stop broker >/dev/null
[ -n "$state" ] && rm -rf "${state:?}/broker"
$ess stack up --broker "$build" >"$out/up.log" 2>&1 || { tail "$out/up.log"; exit 1; }
pid=$(head -1 "$state/broker/pid")
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
c0=$(ticks); t0=$(date +%s.%N); from=$(date -u +%T); load0=$(cut -d' ' -f1 /proc/loadavg)
$ess demo --set "kafka.topic=$name.events" --set "kafka.dlq_topic=$name.dlq" \
  --set "clickhouse.database=$name" --report-dir "$out/report" "$@" >"$out/demo.log" 2>&1 || true
c1=$(ticks); t1=$(date +%s.%N); to=$(date -u +%T); load1=$(cut -d' ' -f1 /proc/loadavg)
rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status"); hwm=$(awk '/VmHWM/{print $2}' "/proc/$pid/status")
python3 - "$out/report/summary.json" "$build" "$from-$to" "$c0" "$c1" "$t0" "$t1" "$rss" "$hwm" "$load0" "$load1" <<'PY'
import json, sys
rep, build, when, c0, c1, t0, t1, rss, hwm, l0, l1 = sys.argv[1:]
d = json.load(open(rep)); L = d["load"]; V = d["verification"]
tl = L["timeline"]; w = min(60, max(1, len(tl) // 4))
first = sum(x["ok"] for x in tl[:w]) / w
last = sum(x["ok"] for x in tl[-w - 1:-1]) / w if len(tl) > w + 1 else float("nan")
cpu = (float(c1) - float(c0)) / 100
print(f"{build} {when} UTC, load average {l0} -> {l1}: {L['events_accepted']} events in {L['duration_s']:.0f} s, "
      f"mean {L['rps']:.0f} req/s, first {w} s {first:.0f} -> last {w} s {last:.0f} ({last / first:.2f}), "
      f"HTTP p50/p95/p99 {L['latency']['p50']:.0f}/{L['latency']['p95']:.0f}/{L['latency']['p99']:.0f} ms, "
      f"e2e p50/p99 {V['e2e_ms']['p50'] / 1000:.2f}/{V['e2e_ms']['p99'] / 1000:.2f} s, "
      f"stored/unique/accepted {V['stored_rows']}/{V['unique_ids']}/{V['accepted']}, lost {V['lost']}, "
      f"duplicates {V['duplicates']}/{V['duplicates_final']} (FINAL), ok {V['ok']}, "
      f"broker {cpu:.1f} CPU-s ({cpu / (float(t1) - float(t0)):.2f} core), RSS {int(rss) // 1024} MiB (peak {int(hwm) // 1024})")
PY
echo "report: $out"
