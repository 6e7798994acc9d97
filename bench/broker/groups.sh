#!/usr/bin/env bash
# Consumer-group stability of a broker: four `ess sink` members join one by one and leave one by
# one while `ess load` sends a steady stream, then every accepted event must be stored once.
#
#   bench/broker/groups.sh CONFIG [STEP_SECONDS] [RATE]
#
# CONFIG names a running stack (`ess -c CONFIG stack up --broker …`). A topic of 4 partitions
# and a database of their own per run. Sink 1 starts at 0 s, sinks 2, 3, 4 join at 1, 2, 3
# steps, then sinks 4, 3, 2 leave (SIGTERM) at 4, 5, 6 steps; the load stops at 7 steps and
# sink 1 drains. Prints, per membership change, the assignments the members logged before the
# next change and when the last of them came (a stable group: one per member, within a few
# seconds), the longest time stored rows did not grow while events came in, and `ess verify`.
set -euo pipefail
config=$1
step=${2:-20}
rate=${3:-2000}
cd "$(dirname "$0")/../.."
ess="./target/release/ess -c $config"
name="groups$(date +%s)"
dir=$(mktemp -d "/tmp/$name.XXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
set_=(--set "kafka.topic=$name.events" --set "kafka.dlq_topic=$name.dlq" --set kafka.partitions=4
  --set "clickhouse.database=$name" --set "sink.group_id=$name.sink")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

$ess migrate "${set_[@]}" >"$dir/migrate.log" 2>&1
$ess ingest "${set_[@]}" --set "ingest.listen=127.0.0.1:$port" --set ingest.auth=off >"$dir/ingest.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done

t0=$(date +%s.%N)
declare -A sink
start_sink() { NO_COLOR=1 $ess sink "${set_[@]}" --set sink.listen= >"$dir/sink$1.log" 2>&1 & sink[$1]=$!; pids+=($!); }
changes=()
mark() { changes+=("$(date +%s.%N) $1"); echo "[$(printf %.0f "$(echo "$(date +%s.%N) - $t0" | bc)")s] $1"; }

$ess load "${set_[@]}" --target "http://127.0.0.1:$port" --rate "$rate" --duration "$((7 * step))s" \
  --record "$dir/run.json" --quiet --json >"$dir/load.json" 2>"$dir/load.log" &
load=$!
pids+=($load)
# Rows stored, once a second, to find stalls.
( while sleep 1; do
    echo "$(date +%s.%N) $(curl -s "$(sed -n 's/^url = "\(.*\)"/\1/p' "$config" | head -1)" \
      --data-binary "SELECT count() FROM $name.events" 2>/dev/null || echo -1)"
  done ) >"$dir/stored.txt" &
pids+=($!)

start_sink 1; mark "sink 1 joins"
for i in 2 3 4; do sleep "$step"; start_sink "$i"; mark "sink $i joins"; done
for i in 4 3 2; do sleep "$step"; kill -TERM "${sink[$i]}"; mark "sink $i leaves"; done
wait "$load" || true
mark "load ends"
$ess verify "${set_[@]}" --record "$dir/run.json" --wait 3m --json >"$dir/verify.json" 2>"$dir/verify.log" || true
kill -TERM "${sink[1]}" 2>/dev/null || true

python3 - "$dir" "$t0" "${changes[@]}" <<'PY'
import json, re, sys, glob, datetime
d, t0, changes = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
changes = [(float(c.split(' ', 1)[0]) - t0, c.split(' ', 1)[1]) for c in changes]
ts = lambda s: datetime.datetime.fromisoformat(s.rstrip('Z')[:26]).replace(tzinfo=datetime.timezone.utc).timestamp() - t0
assigned = []
for f in sorted(glob.glob(f"{d}/sink*.log")):
    n = re.search(r"sink(\d)", f).group(1)
    for line in open(f, errors="replace"):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if "partitions assigned" in line:
            parts = re.search(r"parts=(\[[^\]]*\])", line)
            assigned.append((ts(line.split()[0]), n, parts.group(1) if parts else "?"))
assigned.sort()
print("| membership change | at | assignments before the next change | last one after |")
print("|---|---:|---|---:|")
for i, (at, what) in enumerate(changes):
    until = changes[i + 1][0] if i + 1 < len(changes) else float("inf")
    got = [a for a in assigned if at <= a[0] < until]
    last = f"{got[-1][0] - at:.1f} s" if got else "–"
    print(f"| {what} | {at:.0f} s | {len(got)}: " + ", ".join(f"sink {n} {p}" for _, n, p in got) + f" | {last} |")
rows = [(float(a) - t0, int(b)) for a, b in (l.split() for l in open(f"{d}/stored.txt")) if b.lstrip('-').isdigit()]
end = changes[-1][0]
stall, since, prev = 0.0, None, None
for t, n in rows:
    if t > end: break
    if prev is None or n > prev:
        since, prev = t, n
    else:
        stall = max(stall, t - since)
print(f"longest time without newly stored rows while the load ran: {stall:.0f} s")
v = json.load(open(f"{d}/verify.json"))
v = v.get("verification", v)
keys = ["accepted", "stored_rows", "unique_ids", "lost", "duplicates", "ok"]
print("verify: " + ", ".join(f"{k} {v.get(k)}" for k in keys))
print(f"logs: {d}")
PY
