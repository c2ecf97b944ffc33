"""The examples run as a user runs them: a process, its exit code, what it prints and writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_history_to_daemon(tmp_path):
    """CSV of history -> KeyedRegressor -> `offline train warm-start` -> the daemon cold and with
    STREAMER_WARM_START on an embedded broker -> predictions read back and scored."""
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "history_to_daemon.py"), "--train-rows", "1500", "--val-rows", "2000",
         "--live-rows", "300", "--epochs", "3", "--first", "50", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "COLUMNS": "160"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    text = res.stdout
    assert "600 warm-started predictions read back from the daemon" in text, text[-3000:]
    for cmd in ("offline train warm-start", "streamer broker", "streamer replay", "streamer run --burst",
                "STREAMER_WARM_START=", "streamer tail"):
        assert cmd in text, cmd
    assert (out / "warm-start.tsmf").stat().st_size > 0 and (out / "history.csv").exists()
    # both runs scored every key; the notebook step printed a skill per key
    rows = re.findall(r"│\s*(Demand|Temperature)\s*│\s*(cold|warm)\s*│\s*(\d+)\s*│", text)
    assert sorted((k, m) for k, m, _ in rows) == [("Demand", "cold"), ("Demand", "warm"), ("Temperature", "cold"),
                                                   ("Temperature", "warm")]
    assert all(int(n) == 300 for _, _, n in rows)
    assert len(re.findall(r"[+-]\d+\.\d%", text)) == 2
