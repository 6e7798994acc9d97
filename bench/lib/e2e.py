"""Sustained end-to-end run of one pipeline: paced wrk → ingest → Kafka → sink → ClickHouse.

    e2e.py --system baseline --url http://127.0.0.1:P --database DB \
        --sink-cmd '...' --ingest-cmd '...' [--rate 2000 | --max-rps M | --fraction 0.8] \
        --duration 60 --out DIR --results R.jsonl

Starts the sink first, then the ingest (the original's lesson: consumers up before the load),
sends one probe event and waits until ClickHouse shows it (the whole path works and the
group has joined), finds the maximum with --probe seconds of unpaced wrk unless --rate or
--max-rps is given, then runs wrk for --duration seconds paced at about --rate requests/s
(default: --fraction of the maximum)
(each connection waits between requests; short calibration runs fit the wait to the
latency), waits until every accepted event is stored, and reads the end-to-end latency per
event from the table: store_time − ingest_time (when the sink wrote it minus when ingest
accepted it). CPU seconds are both trees' (ingest + sink) during the paced run and the
drain after it, per million events. Commands run under `bash -c`; both are stopped (SIGTERM
to their process groups' leaders, by pid) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import proctree  # noqa: E402


def query(url: str, sql: str) -> str:
    request = urllib.request.Request(url, data=sql.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode().strip()


def post(url: str, body: bytes, api_key: str) -> int:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url + "/v1/events", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except Exception:
        return 0


def wrk(args, duration: int, delay_ms: int, log) -> dict:
    env = dict(os.environ, BATCH="1", DELAY_MS=str(max(delay_ms, 0)))
    if args.api_key:
        env["API_KEY"] = args.api_key
    cmd = [
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s",
        "--timeout", "10s", "--latency", "-s", args.script, args.url,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    log.write(f"$ DELAY_MS={delay_ms} {' '.join(cmd)}\n{done.stdout}{done.stderr}\n")
    log.flush()
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])
    raise SystemExit(f"wrk gave no result: {done.stderr.strip()[:300]}")


def wait_still(url: str, table: str, still: float, timeout: float) -> int:
    """Waits until the table's count holds still for `still` seconds."""
    last, since, deadline = -1, time.time(), time.time() + timeout
    while time.time() < deadline:
        count = int(query(url, f"SELECT count() FROM {table}"))
        if count != last:
            last, since = count, time.time()
        elif time.time() - since >= still:
            break
        time.sleep(0.2)
    return last


def start(cmd: str, log_path: str) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen(["bash", "-c", "exec " + cmd], stdout=log, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", required=True)
    parser.add_argument("--url", required=True, help="the ingest's base URL")
    parser.add_argument("--ingest-cmd", required=True)
    parser.add_argument("--sink-cmd", required=True)
    parser.add_argument("--clickhouse", default="http://127.0.0.1:8123")
    parser.add_argument("--database", required=True)
    parser.add_argument("--table", default="events")
    parser.add_argument("--rate", type=float, default=0, help="target requests/s (0: a fraction of the maximum)")
    parser.add_argument("--max-rps", type=float, default=0, help="the maximum requests/s (0: measure it)")
    parser.add_argument("--fraction", type=float, default=0.8, help="of the maximum, when --rate is 0")
    parser.add_argument("--probe", type=int, default=10, help="seconds of unpaced load to find the maximum")
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5, help="seconds of each calibration run")
    parser.add_argument("--calibrate-rounds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--script", default=str(HERE.parent / "baseline" / "events.lua"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--ready-timeout", type=float, default=120)
    parser.add_argument("--drain-timeout", type=float, default=600)
    args = parser.parse_args()
    table = f"{args.database}.{args.table}"
    log = open(os.path.join(args.out, f"e2e-{args.system}-wrk.log"), "w")

    sink = start(args.sink_cmd, os.path.join(args.out, f"e2e-{args.system}-sink.log"))
    ingest = start(args.ingest_cmd, os.path.join(args.out, f"e2e-{args.system}-ingest.log"))
    try:
        # Ready: a probe event goes all the way through.
        probe = str(uuid.uuid4())
        body = json.dumps(
            {"id": probe, "type": "probe", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "properties": {}}
        ).encode()
        deadline = time.time() + args.ready_timeout
        sent = False
        while time.time() < deadline:
            for name, process in (("sink", sink), ("ingest", ingest)):
                if process.poll() is not None:
                    path = os.path.join(args.out, f"e2e-{args.system}-{name}.log")
                    tail = open(path).read().strip().splitlines()[-1:] or ["(no output)"]
                    raise SystemExit(f"{args.system}: {name} exited during start-up: {tail[0][:200]}")
            if not sent:
                sent = post(args.url, body, args.api_key) == 202
            elif query(args.clickhouse, f"SELECT count() FROM {table} WHERE id = '{probe}'") != "0":
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"{args.system}: the probe event was not stored within {args.ready_timeout:.0f} s")
        ready_s = args.ready_timeout - (deadline - time.time())

        if not args.rate:
            if not args.max_rps:
                top = wrk(args, args.probe, 0, log)
                args.max_rps = top["requests"] / (top["duration_us"] / 1e6)
            args.rate = args.fraction * args.max_rps

        # Calibrate the per-connection wait with short paced runs: a connection's cycle is its
        # wait plus the latency, and the latency falls as the wait grows, so step half-way
        # towards the wait that the last run's latency asks for, until within 5%.
        interval_ms = args.connections * 1000.0 / args.rate
        delay_ms = interval_ms
        for _ in range(args.calibrate_rounds):
            warm = wrk(args, args.warmup, int(delay_ms), log)
            achieved = warm["requests"] / (warm["duration_us"] / 1e6)
            if achieved <= 0 or abs(achieved - args.rate) <= 0.05 * args.rate:
                break
            latency_ms = args.connections * 1000.0 / achieved - int(delay_ms)
            wanted = max(interval_ms - latency_ms, 0.0)
            delay_ms = max((delay_ms + wanted) / 2, 0.0)
        delay_ms = int(delay_ms)

        wait_still(args.clickhouse, table, 2.0, args.drain_timeout)  # no backlog left
        watchers = [proctree.Watcher(ingest.pid), proctree.Watcher(sink.pid)]
        for w in watchers:
            w.sample()
        cpu_before = sum(w.result()["cpu_s"] for w in watchers)
        count_before = int(query(args.clickhouse, f"SELECT count() FROM {table}"))
        loadavg = float(open("/proc/loadavg").read().split()[0])
        started = time.time()
        result = wrk(args, args.duration, delay_ms, log)
        ended = time.time()
        accepted = result["requests"] - result["errors_status"]

        # Drain: until every accepted event is stored and the count holds still for 3 s.
        expect = count_before + accepted
        last, still_since, drained_at = -1, time.time(), None
        deadline = time.time() + args.drain_timeout
        while time.time() < deadline:
            for w in watchers:
                w.sample()
            count = int(query(args.clickhouse, f"SELECT count() FROM {table}"))
            if count != last:
                last, still_since = count, time.time()
                if count >= expect and drained_at is None:
                    drained_at = time.time()
            elif count >= expect and time.time() - still_since >= 3:
                break
            time.sleep(0.2)
        usage = [w.sample() for w in watchers]
        cpu = sum(u["cpu_s"] for u in usage) - cpu_before
        peak_kb = sum(u["peak_rss_kb"] for u in usage)

        # Latency per event of the paced run (the probe and warm-up events excluded).
        since_ms = int(started * 1000)
        row = query(
            args.clickhouse,
            f"SELECT count(), uniqExact(id), "
            f"quantileExact(0.5)(store_time - ingest_time), quantileExact(0.99)(store_time - ingest_time), "
            f"max(store_time - ingest_time) FROM {table} "
            f"WHERE ingest_time >= {since_ms} AND ingest_time <= {int(ended * 1000) + 1000} FORMAT TSV",
        ).split("\t")
        rows, unique, p50, p99, worst = (int(float(x)) for x in row)
        seconds = result["duration_us"] / 1e6
        rps = result["requests"] / seconds
        out = {
            "part": "e2e",
            "system": args.system,
            "rps": round(rps, 1),
            "p50_ms": result["p50_us"] / 1000,
            "p95_ms": result["p95_us"] / 1000,
            "p99_ms": result["p99_us"] / 1000,
            "errors": result["errors_connect"] + result["errors_read"] + result["errors_write"]
            + result["errors_status"] + result["errors_timeout"],
            "events_per_s": round(accepted / seconds, 1),
            "rows_per_s": round(rows / ((drained_at or time.time()) - started), 1),
            "e2e_p50_ms": p50,
            "e2e_p99_ms": p99,
            "e2e_max_ms": worst,
            "cpu_s_per_million": round(cpu * 1e6 / accepted, 1) if accepted else None,
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "loadavg": loadavg,
            "rows": rows,
            "unique_ids": unique,
            "accepted": accepted,
            "drain_after_load_s": round((drained_at or time.time()) - ended, 2),
            "ready_s": round(ready_s, 2),
            "target_rps": args.rate,
            "share_of_max": f"{rps / args.max_rps:.0%}" if args.max_rps else None,
            "delay_ms": delay_ms,
            "note": (
                f"paced at {rps:,.0f} requests/s"
                + (f" = {rps / args.max_rps:.0%} of its measured maximum" if args.max_rps else "")
                + f" for {seconds:.0f} s; stored {rows:,} rows = {unique:,} ids of {accepted:,} accepted"
                + f"; all stored {(drained_at or time.time()) - ended:.1f} s after the load"
                + ("" if drained_at else " (timed out)")
            ),
        }
        with open(args.results, "a") as f:
            f.write(json.dumps(out) + "\n")
        print(json.dumps(out))
    finally:
        stop(ingest)
        stop(sink)
        log.close()


if __name__ == "__main__":
    main()
