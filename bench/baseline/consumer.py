"""The baseline's sink: the original Python design's final (v5) Kafka → ClickHouse consumers.

N consumer processes (the original ran 4) join one aiokafka consumer group. In each, a reader
task polls Kafka and puts every message on a bounded asyncio.Queue, and a writer task takes
them off, collects a batch (size or age, whichever comes first), inserts it with aiochclient
(`INSERT ... VALUES`, rows as Python tuples) and only then commits the batch's offsets. The
reader never waits for ClickHouse, so polls and heartbeats keep going while a batch is written
(the lesson of the original's v3); commit after write plus a ReplacingMergeTree keyed by the
event id make a redelivered batch harmless (v4, v5).

Rows have the shape `ess migrate` creates (18.16: times as UInt64 milliseconds):
id, type, source, event_time, ingest_time, store_time, properties, kafka_partition,
kafka_offset. Consumer i inserts through node i (mod the list) into the Distributed table.

Each worker prints JSON lines to stdout: `{"event": "first_fetch", ...}` once, then
`{"event": "stats", ...}` every second while rows move, and `{"event": "stopped", ...}`. Both
carry the writer's time so far: waiting for the batch to fill (wait_s), turning messages into
rows (convert_s), inserting (insert_s) and committing (commit_s).

Run: python consumer.py --topic T --database DB [--consumers 4] [--batch-size 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import aiohttp
import orjson
from aiochclient import ChClient
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MS = timedelta(milliseconds=1)


def parse_ms(text: str) -> int:
    """`2026-11-24T08:00:00.123Z` → milliseconds since the epoch, exactly."""
    return (datetime.fromisoformat(text) - EPOCH) // MS


def emit(**fields) -> None:
    sys.stdout.write(orjson.dumps(fields).decode() + "\n")
    sys.stdout.flush()


def to_row(message, store_time: int) -> tuple:
    event = orjson.loads(message.value)
    return (
        uuid.UUID(event["id"]),
        event["type"],
        event.get("source", ""),
        parse_ms(event["timestamp"]),
        parse_ms(event["ingest_time"]),
        store_time,
        orjson.dumps(event.get("properties", {})).decode(),
        message.partition,
        message.offset,
    )


async def reader(consumer: AIOKafkaConsumer, queue: asyncio.Queue, stop: asyncio.Event, index: int):
    first = True
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=500, max_records=1000)
        for messages in batches.values():
            if first and messages:
                first = False
                emit(event="first_fetch", worker=index, pid=os.getpid(), t=time.time())
            for message in messages:
                await queue.put(message)


async def writer(
    consumer: AIOKafkaConsumer,
    client: ChClient,
    table: str,
    queue: asyncio.Queue,
    stop: asyncio.Event,
    args,
    index: int,
):
    rows_total = inserts = commit_failures = 0
    spent = {"wait_s": 0.0, "convert_s": 0.0, "insert_s": 0.0, "commit_s": 0.0}
    last_report = time.time()
    insert_sql = f"INSERT INTO {table} VALUES"
    while not (stop.is_set() and queue.empty()):
        batch = []
        t0 = time.perf_counter()
        try:
            batch.append(await asyncio.wait_for(queue.get(), timeout=0.5))
        except asyncio.TimeoutError:
            continue
        deadline = time.monotonic() + args.flush_interval
        while len(batch) < args.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(queue.get_nowait())
            except asyncio.QueueEmpty:
                try:
                    batch.append(await asyncio.wait_for(queue.get(), timeout=remaining))
                except asyncio.TimeoutError:
                    break
        t1 = time.perf_counter()
        store_time = int(time.time() * 1000)
        rows = [to_row(m, store_time) for m in batch]
        t2 = time.perf_counter()
        while True:
            try:
                await client.execute(insert_sql, *rows)
                break
            except Exception as error:  # ClickHouse down or busy: retry the same batch
                emit(event="insert_error", worker=index, error=str(error)[:300])
                await asyncio.sleep(1)
        t3 = time.perf_counter()
        inserts += 1
        rows_total += len(rows)
        # Commit after the write: the highest offset written per partition, plus one.
        offsets = {}
        for m in batch:
            tp = TopicPartition(m.topic, m.partition)
            if m.offset + 1 > offsets.get(tp, -1):
                offsets[tp] = m.offset + 1
        try:
            await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
        except (CommitFailedError, KafkaError) as error:
            # A rebalance took the partition away: its new owner re-reads from the last
            # commit and the table's replacing merge collapses the repeated rows.
            commit_failures += 1
            emit(event="commit_failed", worker=index, error=str(error)[:300])
        t4 = time.perf_counter()
        spent["wait_s"] += t1 - t0
        spent["convert_s"] += t2 - t1
        spent["insert_s"] += t3 - t2
        spent["commit_s"] += t4 - t3
        now = time.time()
        if now - last_report >= 1.0:
            last_report = now
            emit(event="stats", worker=index, t=now, rows=rows_total, inserts=inserts,
                 **{k: round(v, 3) for k, v in spent.items()})
    emit(
        event="stopped",
        worker=index,
        pid=os.getpid(),
        t=time.time(),
        rows=rows_total,
        inserts=inserts,
        commit_failures=commit_failures,
        **{k: round(v, 3) for k, v in spent.items()},
    )


async def worker(args, index: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    urls = args.clickhouse.split(",")
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.brokers,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=args.heartbeat_interval_ms,
    )
    await consumer.start()
    queue: asyncio.Queue = asyncio.Queue(maxsize=args.queue_size)
    async with aiohttp.ClientSession() as session:
        client = ChClient(session, url=urls[index % len(urls)], database=args.database)
        read = asyncio.create_task(reader(consumer, queue, stop, index))
        write = asyncio.create_task(writer(consumer, client, args.table, queue, stop, args, index))
        await stop.wait()
        read.cancel()
        await asyncio.gather(read, return_exceptions=True)
        await write  # finishes the queued rows, inserts and commits them
    await consumer.stop()


def run_worker(args, index: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(worker(args, index))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", default=None, help="default: baseline-<topic>")
    parser.add_argument(
        "--clickhouse",
        default="http://127.0.0.1:8123,http://127.0.0.1:8124,http://127.0.0.1:8125,http://127.0.0.1:8126",
        help="comma-separated HTTP URLs; consumer i uses URL i mod n",
    )
    parser.add_argument("--database", required=True)
    parser.add_argument("--table", default="events")
    parser.add_argument("--consumers", type=int, default=4)
    # Tuned as the original would: a sweep of 1,000 to 50,000 rows (bench/results/baseline.md)
    # drained fastest at 20,000.
    parser.add_argument("--batch-size", type=int, default=20000)
    parser.add_argument("--flush-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--queue-size", type=int, default=0, help="default: 2 × batch size")
    parser.add_argument("--session-timeout-ms", type=int, default=10000)
    parser.add_argument("--heartbeat-interval-ms", type=int, default=1000)
    args = parser.parse_args()
    args.group = args.group or f"baseline-{args.topic}"
    args.queue_size = args.queue_size or 2 * args.batch_size

    if args.consumers == 1:
        run_worker(args, 0)
        return
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=run_worker, args=(args, i)) for i in range(args.consumers)]
    for child in children:
        child.start()

    def forward(sig, _frame):
        for child in children:
            if child.is_alive():
                os.kill(child.pid, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()


if __name__ == "__main__":
    main()
