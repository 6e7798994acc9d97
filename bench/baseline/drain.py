"""Drain benchmark: a pre-filled topic into ClickHouse, by the baseline's consumers or ess sink.

Pre-fills one topic with N canonical events (unique ids), then for each trial (each batch
size given for the baseline, then `--ess-sinks` processes of `ess sink` when asked) creates a
fresh database with `ess migrate`, starts the sink in a fresh consumer group and times until
ClickHouse holds all N rows, checking count() = uniqExact(id) = N. Prints one JSON line per
trial; drops its databases and topic at the end. Both sinks read the same topic, so their
figures compare directly.

    drain.py --count 1000000 --batch-size 20000 [--batch-size 1000 ...] [--consumers 4]
             [--ess-sinks 1] [--no-baseline] [--results RESULTS.jsonl]
             [--single --clickhouse http://127.0.0.1:8123]

rows_per_s counts the rows stored after the first row became visible, divided by the time from
then until the last row is visible (through the Distributed table on a cluster), the same for
both sinks, so neither is charged its group join; wall_s counts from the sinks' start.
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


def baseline_cmds(args, topic: str, database: str, group: str, batch_size: int) -> list:
    return [[
        sys.executable, str(HERE / "consumer.py"),
        "--brokers", args.brokers,
        "--topic", topic,
        "--group", group,
        "--clickhouse", args.clickhouse,
        "--database", database,
        "--consumers", str(args.consumers),
        "--batch-size", str(batch_size),
        "--flush-interval", str(args.flush_interval),
    ]]


def ess_cmds(args, topic: str, database: str, group: str) -> list:
    sets = [
        f"kafka.brokers={args.brokers}",
        f"kafka.topic={topic}",
        f"kafka.dlq_topic={topic}.dlq",
        f"clickhouse.database={database}",
        f"sink.group_id={group}",
        "sink.listen=127.0.0.1:0",
    ]
    if args.single:
        sets += ["clickhouse.cluster=", "clickhouse.nodes=[]", f"clickhouse.url={args.clickhouse.split(',')[0]}"]
    flags = [x for kv in sets for x in ("--set", kv)]
    return [[args.ess, "sink", *flags] for _ in range(args.ess_sinks)]


def trial(args, topic: str, system: str, label: str, batch_size: int, index: int) -> dict:
    database = f"{args.prefix}_{index}"
    group = f"{database}-group"
    migrate(args.ess, database, topic, args.single, args.partitions)
    if system == "baseline":
        cmds = baseline_cmds(args, topic, database, group, batch_size)
    else:
        cmds = ess_cmds(args, topic, database, group)
    log_path = os.path.join(args.out, f"drain-{system}-{label}.log")
    log = open(log_path, "w")
    loadavg = float(open("/proc/loadavg").read().split()[0])
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    started = time.time()
    processes = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env) for cmd in cmds]
    watchers = [proctree.Watcher(p.pid) for p in processes]
    url = args.clickhouse.split(",")[0]
    count, first_at, first_count, done_at, failed = 0, None, 0, None, ""
    try:
        while True:
            for w in watchers:
                w.sample()
            count = int(query(url, f"SELECT count() FROM {database}.events"))
            now = time.time()
            if count > 0 and first_at is None:
                first_at, first_count = now, count
            if count >= args.count:
                done_at = now
                break
            if any(p.poll() is not None for p in processes):
                failed = "a sink process exited"
                break
            if now - started > args.timeout:
                failed = f"timed out after {args.timeout:.0f} s"
                break
            time.sleep(0.1)
        usage = [w.sample() for w in watchers]
    finally:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()
    first_fetch = None
    with open(log_path) as f:
        for line in f:
            if '"first_fetch"' in line:
                t = json.loads(line)["t"]
                first_fetch = t if first_fetch is None else min(first_fetch, t)
    time.sleep(0.5)
    total, unique = (int(x) for x in query(url, f"SELECT count(), uniqExact(id) FROM {database}.events").split())
    if not args.keep:
        drop(url, database, args.single)
    cpu = sum(u["cpu_s"] for u in usage)
    peak_kb = sum(u["peak_rss_kb"] for u in usage)
    rate = None
    if done_at and first_at and done_at > first_at:
        rate = round((args.count - first_count) / (done_at - first_at))
    elif done_at and not failed:
        failed = "too fast to time: every row appeared in one poll; raise --count"
    result = {
        "system": system,
        "label": label,
        "processes": len(processes),
        "batch_size": batch_size if system == "baseline" else None,
        "count": args.count,
        "rows": total,
        "unique_ids": unique,
        "failed": failed,
        "wall_s": round((done_at or time.time()) - started, 3),
        "drain_s": round(done_at - first_at, 3) if done_at and first_at else None,
        "rows_per_s": rate,
        "rows_per_s_from_first_fetch": round(args.count / (done_at - first_fetch)) if done_at and first_fetch else None,
        "cpu_s": round(cpu, 2),
        "cpu_s_per_million": round(cpu * 1e6 / args.count, 1),
        "peak_rss_kb": peak_kb,
        "loadavg": loadavg,
    }
    print(json.dumps(result), flush=True)
    if args.results and rate:
        if system == "baseline":
            what = f"{args.consumers} aiokafka consumers, batches of {batch_size}"
        else:
            what = f"{len(processes)} `ess sink` process{'es' if len(processes) > 1 else ''}"
        with open(args.results, "a") as f:
            row = {
                "part": "sink-drain",
                "system": system,
                "rows_per_s": rate,
                "cpu_s_per_million": result["cpu_s_per_million"],
                "peak_rss_mb": round(peak_kb / 1024, 1),
                "errors": abs(total - args.count) + (total - unique),
                "loadavg": loadavg,
                "note": f"{what}, {args.count:,} pre-filled events; count {total:,}, uniqExact(id) {unique:,}",
            }
            f.write(json.dumps(row) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
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
    parser.add_argument("--results", help="append a sink-drain result line per system to this file")
    parser.add_argument("--ess-sinks", type=int, default=0, help="also drain with this many `ess sink` processes")
    parser.add_argument("--no-baseline", action="store_true", help="drain with ess sink only")
    parser.add_argument("--keep", action="store_true", help="keep the databases and the topic")
    args = parser.parse_args()
    args.batch_size = args.batch_size or [20_000]
    suffix = secrets.token_hex(4)
    args.prefix = f"bench_drain_{suffix}"
    topic = f"bench.drain.{suffix}"
    os.makedirs(args.out, exist_ok=True)

    kafka(["create", topic, "--partitions", str(args.partitions)], args.brokers)
    try:
        filled = kafka(["prefill", topic, "--count", str(args.count)], args.brokers)
        print(json.dumps({"prefill": filled}), flush=True)
        index = 0
        if not args.no_baseline:
            for size in args.batch_size:
                trial(args, topic, "baseline", f"batch{size}", size, index)
                index += 1
        if args.ess_sinks > 0:
            trial(args, topic, "ess", f"sinks{args.ess_sinks}", 0, index)
    finally:
        if not args.keep:
            kafka(["delete", topic, f"{topic}.dlq"], args.brokers)


if __name__ == "__main__":
    main()
