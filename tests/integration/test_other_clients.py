"""The embedded broker with a client that is not aiokafka (confluent-kafka, i.e. librdkafka), as the
README promises, and `streamer tail` reading what such a producer wrote, in every compression
codec Kafka defines (librdkafka and the Java client often compress; aiokafka needs its codec
extras to read lz4, snappy and zstd)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import orjson
import pytest
from confluent_kafka import Consumer

from tests.kafka_helpers import consume, create_topics, produce, produce_with_librdkafka, unique


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_tail_reads_a_librdkafka_producer_in_every_codec(broker, codec):
    topic = unique(f"codec-{codec}")
    asyncio.run(create_topics(broker.bootstrap_servers, [topic], partitions=1))
    items = [(f"k{i % 3}".encode(), orjson.dumps({"key": f"k{i % 3}", "ts": i, "value": i / 7})) for i in range(50)]
    produce_with_librdkafka(broker.bootstrap_servers, topic, items, **{"compression.type": codec})
    proc = subprocess.run([sys.executable, "-m", "streamer.cli", "tail", topic, "--bootstrap-servers",
                           broker.bootstrap_servers, "--from-beginning", "--limit", "50", "--idle-exit", "20"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [tuple(line.split("\t", 1)) for line in lines] == [(k.decode(), v.decode()) for k, v in items]


def test_a_librdkafka_consumer_reads_what_aiokafka_wrote(broker):
    """The README's confluent-kafka snippet, as written there."""
    topic = unique("watch")
    items = [(b"s1", orjson.dumps({"key": "s1", "prediction": float(i)})) for i in range(20)]
    asyncio.run(produce(broker.bootstrap_servers, topic, items))
    c = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": unique("watch"),
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    c.subscribe([topic])
    got, deadline = [], time.monotonic() + 60
    try:
        while len(got) < len(items) and time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is not None and m.error() is None:
                got.append((m.key(), m.value()))
    finally:
        c.close()
    assert got == items
    # and aiokafka reads the same topic: the broker served both clients the same bytes
    assert [(m.key, m.value) for m in asyncio.run(consume(broker.bootstrap_servers, topic, 20, settle=0.2))] == items
