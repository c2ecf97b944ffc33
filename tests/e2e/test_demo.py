"""`streamer demo` as a newcomer runs it (smaller): exit 0, a summary, a PNG."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    png = tmp_path / "demo.png"
    proc = subprocess.run([sys.executable, "-m", "streamer.cli", "demo", "--rows", "400", "--out", str(png)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "summary" in proc.stdout and "3 dead letters" in proc.stdout
    for key in ("FR", "BE", "Demand", "Temperature"):
        assert key in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
