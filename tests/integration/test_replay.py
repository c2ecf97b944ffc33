"""`streamer replay` as a user runs it, against the embedded broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import orjson
import pandas as pd

from tests.kafka_helpers import consume, unique


def test_replay_wide_and_long_tables(broker, tmp_path):
    wide = tmp_path / "wide.csv"
    pd.DataFrame({"t": ["2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"],
                  "a": [1.0, 2.0, 3.0], "b": [10.0, 20.0, 30.0], "temp": [5.0, 6.0, 7.0]}).to_csv(wide, index=False)
    topic = unique("replay")
    env = {**os.environ, "STREAMER_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
    cmd = [sys.executable, "-m", "streamer.cli", "replay", str(wide), "--topic", topic, "--series", "a,b",
           "--time-column", "t", "--features", "temp", "--rate", "100"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    msgs = asyncio.run(consume(broker.bootstrap_servers, topic, 6, timeout=30))
    ticks = [orjson.loads(m.value) for m in msgs]
    assert sorted((t["key"], t["value"]) for t in ticks) == [("a", 1.0), ("a", 2.0), ("a", 3.0),
                                                             ("b", 10.0), ("b", 20.0), ("b", 30.0)]
    assert all(m.key.decode() == orjson.loads(m.value)["key"] for m in msgs)
    assert {t["ts"] for t in ticks} == {1767225600.0, 1767229200.0, 1767232800.0}
    assert all(t["features"] == {"temp": t["ts"] % 86400 / 3600 + 5.0} for t in ticks)

    topic2 = unique("replay")
    cmd = [sys.executable, "-m", "streamer.cli", "replay", "pkg:tsdata/fpppy/EPF_FR_BE.csv", "--topic", topic2,
           "--key-column", "unique_id", "--value-column", "y", "--time-column", "ds", "--limit", "50"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "sent 50 ticks" in proc.stdout
    assert len(asyncio.run(consume(broker.bootstrap_servers, topic2, 50, timeout=30))) == 50


def test_replay_rejects_ambiguous_table_shape(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("a,b\n1,2\n")
    proc = subprocess.run([sys.executable, "-m", "streamer.cli", "replay", str(f), "--series", "a",
                           "--key-column", "b"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "either series columns" in proc.stdout + proc.stderr
