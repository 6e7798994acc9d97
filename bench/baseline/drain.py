"""Drain benchmark of the baseline's consumers: a pre-filled topic into ClickHouse.

Pre-fills one topic with N canonical events (unique ids), then for each batch size given
creates a fresh database with `ess migrate`, starts consumer.py in a fresh consumer group and
times until ClickHouse holds all N rows, checking count() = uniqExact(id) = N. Prints one
JSON line per trial; drops its databases and topic at the end.

    drain.py --count 500000 --batch-size 20000 [--batch-size 1000 ...] [--consumers 4]
             [--results RESULTS.jsonl] [--single --clickhouse http://127.0.0.1:8123]

rows_per_s counts from the first fetch (the group has joined) to the moment the last row is
visible through the Distributed table; wall_s counts from the consumers' start.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))

import kafka_tool  # noqa: E402
import proctree  # noqa: E402


def query(url: str, sql: str) -> str:
    request = urllib.request.Request(url, data=sql.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode().strip()


def kafka(args_list: list[str], brokers: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE.parent / "lib" / "kafka_tool.py"), "--brokers", brokers, *args_list],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def migrate(ess: str, database: str, topic: str, single: bool, partitions: int) -> None:
    cmd = [
        ess,
        "migrate",
        "--set",
        f"clickhouse.database={database}",
        "--set",
        f"kafka.topic={topic}",
        "--set",
        f"kafka.dlq_topic={topic}.dlq",
        "--set",
        f"kafka.partitions={partitions}",
    ]
    if single:
        cmd += ["--set", "clickhouse.cluster=", "--set", "clickhouse.nodes=[]"]
    subprocess.run(cmd, check=True, capture_output=True)


def drop(url: str, database: str, single: bool) -> None:
    on = "" if single else " ON CLUSTER ess"
    try:
        query(url, f"DROP DATABASE IF EXISTS {database}{on}")
    except Exception as error:
        print(f"drain.py: could not drop {database}: {error}", file=sys.stderr)


def trial(args, topic: str, batch_size: int, index: int) -> dict:
    database = f"{args.prefix}_{index}"
    group = f"{database}-group"
    migrate(args.ess, database, topic, args.single, args.partitions)
    log = open(os.path.join(args.out, f"drain-consumer-{batch_size}.log"), "w")
    cmd = [
        sys.executable,
        str(HERE / "consumer.py"),
        "--brokers", args.brokers,
        "--topic", topic,
        "--group", group,
        "--clickhouse", args.clickhouse,
        "--database", database,
        "--consumers", str(args.consumers),
        "--batch-size", str(batch_size),
        "--flush-interval", str(args.flush_interval),
    ]
    loadavg = float(open("/proc/loadavg").read().split()[0])
    started = time.time()
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    watcher = proctree.Watcher(process.pid)
    url = args.clickhouse.split(",")[0]
    count, done_at, timed_out = 0, None, False
    try:
        while True:
            watcher.sample()
            count = int(query(url, f"SELECT count() FROM {database}.events"))
            if count >= args.count:
                done_at = time.time()
                break
            if process.poll() is not None or time.time() - started > args.timeout:
                timed_out = True
                break
            time.sleep(0.2)
        usage = watcher.sample()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
    first = None
    with open(os.path.join(args.out, f"drain-consumer-{batch_size}.log")) as f:
        for line in f:
            if '"first_fetch"' in line:
                t = json.loads(line)["t"]
                first = t if first is None else min(first, t)
    time.sleep(0.5)
    total, unique = (int(x) for x in query(url, f"SELECT count(), uniqExact(id) FROM {database}.events").split())
    if not args.keep:
        drop(url, database, args.single)
    result = {
        "batch_size": batch_size,
        "consumers": args.consumers,
        "count": args.count,
        "rows": total,
        "unique_ids": unique,
        "timed_out": timed_out,
        "wall_s": round((done_at or time.time()) - started, 3),
        "drain_s": round(done_at - first, 3) if done_at and first else None,
        "rows_per_s": round(args.count / (done_at - first)) if done_at and first else None,
        "cpu_s": usage["cpu_s"],
        "cpu_s_per_million": round(usage["cpu_s"] * 1e6 / args.count, 1),
        "peak_rss_kb": usage["peak_rss_kb"],
        "loadavg": loadavg,
    }
    print(json.dumps(result), flush=True)
    if args.results and result["rows_per_s"]:
        with open(args.results, "a") as f:
            row = {
                "part": "sink-drain",
                "system": "baseline",
                "rows_per_s": result["rows_per_s"],
                "cpu_s_per_million": result["cpu_s_per_million"],
                "peak_rss_mb": round(result["peak_rss_kb"] / 1024, 1),
                "errors": 0 if unique == args.count == total else abs(total - args.count),
                "loadavg": loadavg,
                "note": f"{args.consumers} aiokafka consumers, batches of {batch_size}, "
                f"{args.count:,} events; count = uniqExact(id) = {unique:,}",
            }
            f.write(json.dumps(row) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500_000)
    parser.add_argument("--batch-size", type=int, action="append")
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--flush-interval", type=float, default=1.0)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument(
        "--clickhouse",
        default="http://127.0.0.1:8123,http://127.0.0.1:8124,http://127.0.0.1:8125,http://127.0.0.1:8126",
    )
    parser.add_argument("--single", action="store_true", help="one ClickHouse server, no cluster")
    parser.add_argument("--ess", default=str(HERE.parent.parent / "target" / "release" / "ess"))
    parser.add_argument("--out", default=str(HERE.parent / "out"))
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--results", help="append a sink-drain result line to this file")
    parser.add_argument("--keep", action="store_true", help="keep the databases and the topic")
    args = parser.parse_args()
    args.batch_size = args.batch_size or [20_000]
    suffix = secrets.token_hex(4)
    args.prefix = f"bench_baseline_{suffix}"
    topic = f"bench.baseline.drain.{suffix}"
    os.makedirs(args.out, exist_ok=True)

    kafka(["create", topic, "--partitions", str(args.partitions)], args.brokers)
    try:
        filled = kafka(["prefill", topic, "--count", str(args.count)], args.brokers)
        print(json.dumps({"prefill": filled}), flush=True)
        for i, size in enumerate(args.batch_size):
            trial(args, topic, size, i)
    finally:
        if not args.keep:
            kafka(["delete", topic, f"{topic}.dlq"], args.brokers)


if __name__ == "__main__":
    main()
