"""Kafka chores for bench/run, on aiokafka (run it with bench/.venv/bin/python).

    kafka_tool.py create TOPIC [--partitions 8]
    kafka_tool.py delete TOPIC [TOPIC ...]
    kafka_tool.py end-offsets TOPIC              → total of the partitions' end offsets (see below)
    kafka_tool.py committed TOPIC GROUP          → total of the group's committed offsets
    kafka_tool.py prefill TOPIC --count N        → N canonical events with unique ids

Every command prints one JSON object on stdout.

tansu 0.6 answers ListOffsets(latest) with the base offset of a partition's last record batch,
not the high watermark: after 50,000 records it reported 40,008 while a consumer read all
50,000. End offsets (and lag computed from them) are therefore low on tansu; bench/run counts
what it sent and what ClickHouse holds instead.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


def out(**fields) -> None:
    print(orjson.dumps(fields).decode(), flush=True)


async def create(args) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=args.brokers)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(args.topic, args.partitions, 1)])
        errors = [e for e in response.topic_errors if e[1] not in (0, 36)]  # 36: already exists
        if errors:
            raise SystemExit(f"create {args.topic}: {errors}")
    finally:
        await admin.close()
    out(topic=args.topic, partitions=args.partitions)


async def delete(args) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=args.brokers)
    await admin.start()
    try:
        await admin.delete_topics(args.topics)
    except Exception as error:  # best effort: the broker may not support or know the topic
        out(deleted=[], error=str(error)[:200])
        return
    finally:
        await admin.close()
    out(deleted=args.topics)


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list:
    for _ in range(50):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise SystemExit(f"topic {topic} has no partitions")


async def offsets(brokers: str, topic: str, group: str | None):
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = await partitions_of(consumer, topic)
        ends = await consumer.end_offsets(tps)
        committed = None
        if group:
            committed = 0
            for tp in tps:
                committed += (await consumer.committed(tp)) or 0
        return sum(ends.values()), committed
    finally:
        await consumer.stop()


async def end_offsets(args) -> None:
    end, _ = await offsets(args.brokers, args.topic, None)
    out(topic=args.topic, end=end)


async def committed(args) -> None:
    end, done = await offsets(args.brokers, args.topic, args.group)
    out(topic=args.topic, group=args.group, end=end, committed=done)


async def prefill(args) -> None:
    """Canonical events (the form both ingests write), keyed by id, as fast as the client goes."""
    producer = AIOKafkaProducer(
        bootstrap_servers=args.brokers, acks="all", linger_ms=5, max_batch_size=1 << 20
    )
    await producer.start()
    start = time.time()
    ingest_ms = int(start * 1000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start)) + ".000Z"
    try:
        pending = []
        for i in range(args.count):
            event_id = str(uuid.uuid4())
            value = orjson.dumps(
                {
                    "id": event_id,
                    "type": "page_view",
                    "source": "bench",
                    "timestamp": stamp,
                    "ingest_time": stamp,
                    "properties": {"path": f"/products/{i % 1000}", "screen": "1920x1080"},
                }
            )
            pending.append(await producer.send(args.topic, value, key=event_id.encode()))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    elapsed = time.time() - start
    out(topic=args.topic, count=args.count, seconds=round(elapsed, 3), ingest_ms=ingest_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description="Kafka chores for bench/run")
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create")
    p.add_argument("topic")
    p.add_argument("--partitions", type=int, default=8)
    p = sub.add_parser("delete")
    p.add_argument("topics", nargs="+")
    p = sub.add_parser("end-offsets")
    p.add_argument("topic")
    p = sub.add_parser("committed")
    p.add_argument("topic")
    p.add_argument("group")
    p = sub.add_parser("prefill")
    p.add_argument("topic")
    p.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    command = {
        "create": create,
        "delete": delete,
        "end-offsets": end_offsets,
        "committed": committed,
        "prefill": prefill,
    }[args.command]
    asyncio.run(command(args))


if __name__ == "__main__":
    main()
