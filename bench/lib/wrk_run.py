"""One wrk run against a server whose pid is known; appends one result line.

    wrk_run.py --pid PID --url URL --part ingest-single --system baseline \
        --results RESULTS.jsonl [--duration 30] [--connections 64] [--threads 2] \
        [--batch 1] [--warmup 5] [--script bench/baseline/events.lua] [--log FILE]

A warm-up run (not counted) goes first. CPU seconds are the server tree's utime + stime
during the counted run only (from /proc), charged per million events accepted; peak RSS is
the tree's VmHWM at the end (start-up and warm-up included). events_per_s counts events in
requests answered 202 (the servers answer 202 only once the broker has the event; for the
ceiling it is what it would be, with no broker).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proctree  # noqa: E402


def wrk(args, duration: int, log) -> dict:
    env = dict(os.environ, BATCH=str(args.batch))
    if args.api_key:
        env["API_KEY"] = args.api_key
    cmd = [
        args.wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{duration}s",
        "--timeout", "10s",
        "--latency",
        "-s", args.script,
        args.url,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if log:
        log.write(f"$ BATCH={args.batch} {' '.join(cmd)}\n{done.stdout}{done.stderr}\n")
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])
    raise SystemExit(f"wrk gave no result (exit {done.returncode}): {done.stderr.strip()[:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--part", required=True)
    parser.add_argument("--system", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--wrk", default="wrk")
    parser.add_argument(
        "--script", default=str(Path(__file__).resolve().parent.parent / "baseline" / "events.lua")
    )
    parser.add_argument("--log")
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    log = open(args.log, "a") if args.log else None
    if args.warmup > 0:
        wrk(args, args.warmup, log)
    loadavg = float(open("/proc/loadavg").read().split()[0])
    before = proctree.snapshot(args.pid)
    result = wrk(args, args.duration, log)
    after = proctree.snapshot(args.pid)
    if log:
        log.close()

    seconds = result["duration_us"] / 1e6
    errors = (
        result["errors_connect"]
        + result["errors_read"]
        + result["errors_write"]
        + result["errors_status"]
        + result["errors_timeout"]
    )
    ok = max(result["requests"] - result["errors_status"], 0)
    events = ok * args.batch
    cpu = max(after["cpu_s"] - before["cpu_s"], 0.0)
    row = {
        "part": args.part,
        "system": args.system,
        "rps": round(result["requests"] / seconds, 1),
        "p50_ms": result["p50_us"] / 1000,
        "p95_ms": result["p95_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "errors": errors,
        "events_per_s": round(events / seconds, 1),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_million": round(cpu * 1e6 / events, 1) if events else None,
        "peak_rss_mb": round(after["peak_rss_kb"] / 1024, 1),
        "requests": result["requests"],
        "batch": args.batch,
        "connections": args.connections,
        "duration_s": round(seconds, 2),
        "loadavg": loadavg,
        "t": time.time(),
    }
    if args.system == "ceiling":
        row["events_per_s"] = None
    if args.note:
        row["note"] = args.note
    with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
