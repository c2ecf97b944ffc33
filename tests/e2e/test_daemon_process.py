"""`streamer run` as a process, driven only through Kafka and HTTP: start, feed, scrape, SIGTERM, restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import orjson
import pytest

from streamer.broker import free_port
from tests.kafka_helpers import consume, create_topics, http_status, produce, scrape, unique


def start_daemon(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamer.cli", "run"], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@contextlib.contextmanager
def daemon_process(env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A `streamer run` process, killed on the way out if the test left it running."""
    proc = start_daemon(env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        if http_status(port, "/readyz") == 200:
            return
        time.sleep(0.2)
    raise AssertionError("daemon never became ready")


def ticks(keys: int, start: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(f"k{k}".encode(), orjson.dumps({"key": f"k{k}", "ts": t, "value": float((t * 7 + k) % 11)}))
            for t in range(start, start + n) for k in range(keys)]


@pytest.mark.slow
def test_daemon_process_publishes_drains_on_sigterm_and_resumes_without_reemitting(broker):
    bs = broker.bootstrap_servers
    topics = {"in": unique("in"), "out": unique("out"), "dlq": unique("dlq")}
    port = free_port()
    env = {"STREAMER_BOOTSTRAP_SERVERS": bs, "STREAMER_INPUT_TOPIC": topics["in"],
           "STREAMER_OUTPUT_TOPIC": topics["out"], "STREAMER_DLQ_TOPIC": topics["dlq"],
           "STREAMER_GROUP_ID": unique("g"), "STREAMER_METRICS_PORT": str(port), "STREAMER_METRICS_HOST": "127.0.0.1",
           "STREAMER_SESSION_TIMEOUT_MS": "3000", "STREAMER_HEARTBEAT_INTERVAL_MS": "500", "STREAMER_HIDDEN": "4",
           "STREAMER_LOG_FORMAT": "json"}
    asyncio.run(create_topics(bs, [topics["in"]], partitions=4))

    with daemon_process(env) as first:
        wait_ready(port, first)
        asyncio.run(produce(bs, topics["in"], ticks(10, 0, 20) + [(b"k1", b"not json")]))
        preds = asyncio.run(consume(bs, topics["out"], 200, settle=0.5))
        assert len(preds) == 200
        deadline = time.monotonic() + 10
        while scrape(port)["streamer_ticks_consumed_total"] < 201 and time.monotonic() < deadline:
            time.sleep(0.2)
        m = scrape(port)
        assert m["streamer_ticks_consumed_total"] == 201 and m["streamer_predictions_published_total"] == 200
        assert m["streamer_dead_letters_total{reason=not_json}"] == 1
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=30)
        assert first.returncode == 0, out
        lines = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert any(rec["event"] == "stopped" and rec["predictions"] == 200 for rec in lines)
        assert all("value" not in rec for rec in lines)  # no per-tick log lines

    with daemon_process(env) as second:
        wait_ready(port, second)
        asyncio.run(produce(bs, topics["in"], ticks(10, 20, 5)))
        preds = asyncio.run(consume(bs, topics["out"], 250, settle=2.0))
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    seen = [(orjson.loads(p.value)["key"], orjson.loads(p.value)["ts"]) for p in preds]
    assert len(seen) == 250 and len(set(seen)) == 250, "committed ticks were predicted again after the restart"
    assert sorted({ts for _, ts in seen}) == list(range(25))
    assert len(asyncio.run(consume(bs, topics["dlq"], 1, timeout=10))) == 1
