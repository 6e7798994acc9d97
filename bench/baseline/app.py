"""The baseline's ingest: the original Python design's final (v5) HTTP tier.

FastAPI served by one uvicorn worker; an aiokafka producer (acks=all) started with the app;
each request validates its event and awaits `send_and_wait` (a batch: every send) before it
answers 202. Nothing is buffered in the process: when the request returns, the broker has the
event, as in the original.

Request shape is the one ess ingest serves, so the same load scripts drive both:

    POST /v1/events         {"id": "<uuid>", "type": "page_view", "timestamp": "...",
                             "properties": {}}                       (one event)
    POST /v1/events/batch   a JSON array of such objects
    → 202 {"accepted": N, "ids": ["<uuid>", ...]}

Each Kafka message is the event as compact JSON in the same canonical form ess writes (id,
type, source, timestamp and ingest_time as UTC RFC 3339 with milliseconds, properties), keyed
by the event id, so either sink can drain a topic either ingest filled.

Run: python app.py --port 8090 --topic T [--brokers 127.0.0.1:9092]
"""

import argparse
import asyncio
import os
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

import orjson
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from pydantic import BaseModel, Field

BROKERS = os.environ.get("BASELINE_BROKERS", "127.0.0.1:9092")
TOPIC = os.environ.get("BASELINE_TOPIC", "bench.baseline")


class Event(BaseModel):
    """The minimal event shape: what ess ingest requires of a client's event."""

    id: uuid.UUID
    type: str = Field(min_length=1, max_length=128)
    source: str = ""
    timestamp: Optional[datetime] = None
    properties: Dict[str, Any] = Field(default_factory=dict)


def rfc3339_ms(ms: int) -> str:
    """Milliseconds since the epoch as `2026-11-24T08:00:00.123Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def to_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


producer: Optional[AIOKafkaProducer] = None


@asynccontextmanager
async def lifespan(_app: FastAPI):
    global producer
    producer = AIOKafkaProducer(bootstrap_servers=BROKERS, acks="all")
    await producer.start()
    try:
        yield
    finally:
        await producer.stop()


app = FastAPI(lifespan=lifespan)


def to_message(event: Event, event_id: str, ingest_time: str) -> bytes:
    return orjson.dumps(
        {
            "id": event_id,
            "type": event.type,
            "source": event.source,
            "timestamp": rfc3339_ms(to_ms(event.timestamp)) if event.timestamp else ingest_time,
            "ingest_time": ingest_time,
            "properties": event.properties,
        }
    )


@app.post("/v1/events", status_code=202)
async def ingest(event: Event) -> Dict[str, Any]:
    """The original's path: one event, one awaited send."""
    event_id = str(event.id)
    message = to_message(event, event_id, rfc3339_ms(int(time.time() * 1000)))
    await producer.send_and_wait(TOPIC, message, key=event_id.encode())
    return {"accepted": 1, "ids": [event_id]}


@app.post("/v1/events/batch", status_code=202)
async def ingest_batch(events: List[Event]) -> Dict[str, Any]:
    """A batch: every send queued, then all awaited together (awaiting each in turn would
    serialise the round trips, which no one would write)."""
    ingest_time = rfc3339_ms(int(time.time() * 1000))
    ids = [str(event.id) for event in events]
    pending = [
        await producer.send(TOPIC, to_message(event, event_id, ingest_time), key=event_id.encode())
        for event_id, event in zip(ids, events)
    ]
    await asyncio.gather(*pending)
    return {"accepted": len(ids), "ids": ids}


@app.get("/health")
async def health() -> Dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    global BROKERS, TOPIC
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--brokers", default=BROKERS)
    parser.add_argument("--topic", default=TOPIC)
    args = parser.parse_args()
    BROKERS, TOPIC = args.brokers, args.topic
    # One worker, in this process (so its pid is the server's); uvicorn's standard extras
    # (uvloop, httptools) as `pip install uvicorn[standard]` brings them. The per-request
    # access log is off: it would cost the baseline time that measures nothing of the design.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
