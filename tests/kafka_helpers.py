"""Helpers for tests that talk to the embedded broker: topics, producing, consuming, scraping."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_topics(bootstrap: str, names: list[str], partitions: int, **client: Any) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]], **client: Any) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **client)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce_with_librdkafka(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]], **conf: object) -> None:
    """Produce through librdkafka (confluent-kafka), the client most producers in the field are built on."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": False, **conf})
    for key, value in items:
        p.produce(topic, value=value, key=key)
    assert p.flush(30) == 0, "librdkafka could not deliver everything"


async def consume(bootstrap: str, topic: str, expected: int, timeout: float = 60.0, settle: float = 1.0,
                  **client: Any) -> list:
    """Read a topic from the start until `expected` messages arrived (then `settle` s more, to catch extras).
    `client`: more client arguments (security settings)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                **client)
    await consumer.start()
    out: list = []
    try:
        deadline = time.monotonic() + timeout
        extra_until = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                out.extend(msgs)
            if len(out) >= expected and extra_until is None:
                extra_until = time.monotonic() + settle
            if extra_until is not None and time.monotonic() > extra_until:
                break
    finally:
        await consumer.stop()
    return out


def scrape(port: int) -> dict[str, float]:
    """GET /metrics over HTTP: {"name{label=value,...}": value} for every sample."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0
