"""`streamer bench`: the protocol on real data, and the command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from models.cells import NetSpec
from streamer import bench as B
from tests.conftest import data_file


def test_ett_protocol_persistence_mse_is_the_published_0363():
    df = pd.read_csv(data_file("ett", "ETTh1.csv"))
    cols = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    stream = B.series_stream(df, cols, warmup=2880, lags=3, start=3600, end=14400)
    res = B.run(stream, "persistence", NetSpec(n_in=stream.x.shape[2]))
    assert res.mse == pytest.approx(0.363, abs=0.001)
    # the scored targets are exactly rows 3600..14399
    assert len(stream.d) - stream.score_from == 14400 - 3600


def test_series_regressor_holds_current_values_and_own_lags():
    df = pd.DataFrame({"a": np.arange(10.0), "b": 100 + np.arange(10.0) ** 2})
    s = B.series_stream(df, ["a", "b"], warmup=10, lags=2, start=5, end=None)
    z = (df.to_numpy() - df.to_numpy().mean(0)) / df.to_numpy().std(0)
    t = 4  # stream step 2 is data row t = lags + 2
    np.testing.assert_allclose(s.x[2, 1], [z[t, 0], z[t, 1], z[t - 1, 1], z[t - 2, 1]], rtol=1e-6)
    np.testing.assert_allclose(s.d[2], z[t + 1], rtol=1e-6)


def test_learners_beat_the_mean_on_a_real_stream_prefix():
    df = pd.read_csv(data_file("regression", "kin8nm.csv")).iloc[:600]
    stream = B.regression_stream(df, "target")
    spec = NetSpec(n_in=8, hidden=8)
    mean = B.run(stream, "mean", spec).nmse
    for learner in ("ekf", "dekf"):
        assert B.run(stream, learner, spec, options={"window": 3}).nmse < 0.8 * mean


def test_parse_options_types_and_rejects_unknown_fields():
    assert B.parse_options(["ekf.p0=25", "pf.n_particles=8", "ekf.joseph=true"]) == {
        "ekf": {"p0": 25.0, "joseph": True}, "pf": {"n_particles": 8}}
    with pytest.raises(ValueError, match="no option"):
        B.parse_options(["ekf.nope=1"])
    with pytest.raises(ValueError, match="learner.field=value"):
        B.parse_options(["p0=1"])


def test_bench_command_end_to_end(tmp_path):
    csv = tmp_path / "kin.csv"
    pd.read_csv(data_file("regression", "kin8nm.csv")).iloc[:300].to_csv(csv, index=False)
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    cmd = [sys.executable, "-m", "streamer.cli", "bench", str(csv), "--target", "target", "--learners", "sgd,pf",
           "--hidden", "4", "--particles", "8", "--seeds", "2", "--json", str(out), "--plot", str(png)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["learner"] for r in rows] == ["mean", "persistence", "linear", "sgd", "pf"]
    for r in rows:
        assert {"learner", "cell", "nmse", "mse", "mae", "coverage90", "ticks_per_s"} <= set(r)
        assert np.isfinite(r["nmse"]) and 0 <= r["coverage90"] <= 1 and r["ticks_per_s"] > 0
    assert rows[3]["seeds"] == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "prequential scores" in proc.stdout


def test_bench_command_rejects_bad_arguments(tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n1,2\n3,4\n")
    for args, message in (([], "exactly one of"), (["--target", "zz"], "target column"),
                          (["--target", "b", "--learners", "sgd,nope"], "unknown learners")):
        proc = subprocess.run([sys.executable, "-m", "streamer.cli", "bench", str(csv), *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and message in proc.stderr + proc.stdout, (args, proc.stderr)
