"""Helpers the tests share: daemon processes, tick streams, the README's configuration table,
malformed messages. (Broker clients and scraping are in kafka_helpers.)"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import orjson

from streamer.broker import free_port
from streamer.config import Settings
from streamer.pipeline import Record
from tests.kafka_helpers import http_status, unique

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_table() -> dict[str, str]:
    rows = re.findall(r"^\| `STREAMER_([A-Z0-9_]+)` \| `?([^|`]*)`? \|", README.read_text(), flags=re.M)
    return {name.lower(): default.strip() for name, default in rows}


BAD = [  # (message, the dead-letter reason it must get)
    (b"x" * 70_000, "oversized"),
    (b"{not json", "not_json"),
    (b"[1, 2]", "not_object"),
    (orjson.dumps({"key": "a", "ts": 0, "value": 1, "v": 2}), "unknown_schema_version"),
    (orjson.dumps({"ts": 0, "value": 1}), "missing_key"),
    (orjson.dumps({"key": "", "ts": 0, "value": 1}), "bad_key"),
    (orjson.dumps({"key": "a", "ts": 0}), "missing_value"),
    (orjson.dumps({"key": "a", "ts": 0, "value": "12"}), "non_numeric_value"),
    (b'{"key": "a", "ts": 0, "value": NaN}', "not_json"),
    (b'{"key": "a", "ts": 0, "value": 1e999}', "not_json"),  # orjson refuses overflowing literals
    (orjson.dumps({"key": "a", "ts": "yesterday", "value": 1}), "bad_ts"),
    (orjson.dumps({"key": "a", "ts": 0, "value": 1, "features": {"p": "x"}}), "bad_features"),
    (orjson.dumps({"key": "a", "ts": 0, "value": 1, "text": 5}), "bad_text"),
]


def wait_until(condition: Callable[[], object], timeout: float, message: str, every: float = 0.05) -> None:
    """Poll `condition` until it is true; AssertionError with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(every)


def start_daemon(env: dict[str, str], log: IO[bytes] | None = None) -> subprocess.Popen:
    """`streamer run` with these variables; its output on a text pipe, or into `log` (a pipe that
    nobody reads while the test runs for long would fill up and stall the daemon)."""
    return subprocess.Popen([sys.executable, "-m", "streamer.cli", "run"], env={**os.environ, **env},
                            stdout=subprocess.PIPE if log is None else log, stderr=subprocess.STDOUT,
                            text=log is None)


@contextlib.contextmanager
def daemon_process(env: dict[str, str], log: Path | None = None) -> Iterator[subprocess.Popen]:
    """A `streamer run` process, killed on the way out if the test left it running; its output goes
    to the file `log` when one is given."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "ab")) if log is not None else None  # noqa: SIM115
        proc = start_daemon(env, out)
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


def stream(start: int, stop: int, keys: int = 12) -> list[tuple[bytes, bytes]]:
    out = []
    for t in range(start, stop):
        for k in range(keys):
            v = 10 * k + math.sin(t / 4 + k) + 0.3 * math.sin(t / 1.7)
            out.append((f"s{k}".encode(), orjson.dumps({"key": f"s{k}", "ts": t, "value": v})))
    return out


def env_for(bs: str, **over: str) -> dict[str, str]:
    env = {"bootstrap_servers": bs, "input_topic": unique("in"), "output_topic": unique("out"),
           "dlq_topic": unique("dlq"), "group_id": unique("g"), "metrics_port": str(free_port()),
           "metrics_host": "127.0.0.1", "session_timeout_ms": "3000", "heartbeat_interval_ms": "500",
           "hidden": "4", "log_format": "json", "learner": "sgd"}
    env.update(over)
    return {f"STREAMER_{k.upper()}": v for k, v in env.items()}


def predictions(msgs) -> dict[tuple[str, int], list[dict]]:
    """(key, tick ts) -> every prediction published for that tick (more than one = a duplicate)."""
    out: dict[tuple[str, int], list[dict]] = {}
    for m in msgs:
        p = orjson.loads(m.value)
        out.setdefault((p["key"], int(p["ts"])), []).append(p)
    return out


def settings_for(broker, **over) -> Settings:
    """Settings for an in-process daemon on the embedded broker: fresh topics and group, short timeouts."""
    base = dict(bootstrap_servers=broker.bootstrap_servers, input_topic=unique("in"), output_topic=unique("out"),
                dlq_topic=unique("dlq"), group_id=unique("g"), metrics_port=0, metrics_host="127.0.0.1",
                session_timeout_ms=3000, heartbeat_interval_ms=500, lags=2, hidden=4, burst=True, burst_idle_s=2.0)
    return Settings(**{**base, **over})


_OFFSETS = itertools.count()


def rec(value: bytes | None, key: bytes | None = None, offset: int | None = None) -> Record:
    """A record on partition 0, for a Pipeline in process; offsets increase unless given (a re-delivery repeats one)."""
    return Record("ticks", 0, next(_OFFSETS) if offset is None else offset, key, value)


def tick(key: str, value, ts=0, **extra) -> bytes:
    """A tick message."""
    return orjson.dumps({"key": key, "ts": ts, "value": value, **extra})
