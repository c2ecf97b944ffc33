"""The learners behind River's API, against River's own models, in one run.

1. kin8nm through `river.evaluate.progressive_val_score` (predict, then learn, each row once):
   `models.api.OnlineRegressor` for every learner and baseline with its defaults, River's
   `LinearRegression` (after `StandardScaler`, River's idiom) and `SNARIMAX` (its exogenous
   regressor the same pipeline; a forecaster, so behind a 10-line adapter that forecasts one step
   from x and learns y). NMSE = MSE / var(y) and ticks/s (rows over the whole evaluation's wall time).
2. 1,000 series at once: `KeyedRegressor.predict_many` + `learn_many` (one call each per wave of
   1,000 ticks) against a dict of 1,000 River pipelines, each `predict_one` + `learn_one`. The series
   are AR(2) processes with their own coefficients and levels; x is each key's last 4 values. MAE
   over the second half, and ticks/s.

What a user gets: no flags, torch's default threads, the process's default allocator.

    python benchmarks/river_api.py [--json benchmarks/out/river.json] [--ticks 200]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import track
from rich.table import Table
from river import base, evaluate, linear_model, metrics, preprocessing, stream, time_series

import streamer.bench as B
from models import defaults
from models.api import KeyedRegressor, OnlineRegressor
from models.cells import NetSpec
from models.learners import BASELINES, LEARNERS

KIN8NM = Path(__file__).resolve().parents[2] / "shared" / "data" / "regression" / "kin8nm.csv"
console = Console()


class ForecasterAsRegressor(base.Regressor):
    """A River forecaster in progressive_val_score: predict y from x as a one-step forecast with x as
    its exogenous input, then learn (y, x)."""

    def __init__(self, forecaster: Any):
        self.forecaster = forecaster

    def learn_one(self, x: dict, y: float) -> None:
        self.forecaster.learn_one(y, x)

    def predict_one(self, x: dict) -> float:
        return float(self.forecaster.forecast(horizon=1, xs=[x])[0])


def river_linear() -> Any:
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


def kin8nm_rows() -> list[dict[str, Any]]:
    df = pd.read_csv(KIN8NM)
    y = df.pop("target")
    var = float(np.var(y.to_numpy()))
    models: list[tuple[str, Any]] = [(f"OnlineRegressor(learner={n!r})", OnlineRegressor(learner=n))
                                     for n in LEARNERS + BASELINES]
    models.append(("river StandardScaler | LinearRegression", river_linear()))
    models.append(("river SNARIMAX(p=1, d=0, q=1, regressor=StandardScaler | LinearRegression)",
                   ForecasterAsRegressor(time_series.SNARIMAX(p=1, d=0, q=1, regressor=river_linear()))))
    out = []
    for name, model in track(models, description="kin8nm", console=console):
        mse = metrics.MSE()
        t0 = time.perf_counter()
        evaluate.progressive_val_score(stream.iter_pandas(df, y), model, mse)
        seconds = time.perf_counter() - t0
        out.append({"model": name, "nmse": mse.get() / var, "ticks_per_s": len(df) / seconds, "rows": len(df)})
    # the same model through `streamer bench` (float32 regressors, the same key name and seed): the API is
    # the daemon's bank, not a copy of it
    kin = B.regression_stream(pd.read_csv(KIN8NM), "target")
    kin.keys = ["series"]  # an OnlineRegressor's one key (its initial weights are drawn from the name)
    default = next(r for r in out if r["model"] == f"OnlineRegressor(learner={defaults.LEARNER!r})")
    default["bench_nmse_same_key"] = B.run(kin, defaults.LEARNER, NetSpec(n_in=kin.x.shape[2])).nmse
    return out


def ar_streams(K: int, T: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """K AR(2) series of T + 4 values -> keys, x [T, K, 4] (a key's last 4 values), y [T, K] (the next)."""
    g = np.random.default_rng(seed)
    a1, a2 = g.uniform(0.3, 1.2, K), g.uniform(-0.5, 0.0, K)
    a2 = np.where(a1 + a2 >= 0.95, 0.9 - a1, a2)  # stationary
    level, scale = g.uniform(-100, 100, K), g.uniform(0.1, 10, K)
    z = np.zeros((T + 5, K))
    for t in range(2, T + 5):
        z[t] = a1 * z[t - 1] + a2 * z[t - 2] + g.normal(size=K)
    v = level + scale * z  # [T + 5, K]
    x = np.stack([v[4 - j : 4 - j + T] for j in range(4)], axis=2)  # [T, K, 4]: v_t, v_{t-1}, v_{t-2}, v_{t-3}
    return [f"s{k}" for k in range(K)], x, v[5 : 5 + T]


def keyed_rows(K: int, T: int) -> list[dict[str, Any]]:
    keys, x, y = ar_streams(K, T)
    names = [f"lag{j}" for j in range(4)]
    out = []
    for learner in ("ensemble", "sgd", "dekf", "linear"):
        model = KeyedRegressor(learner=learner, features=tuple(names))
        err = np.empty_like(y)
        t0 = time.perf_counter()
        for t in track(range(T), description=f"KeyedRegressor {learner}", console=console):
            err[t] = model.predict_many(keys, x[t]) - y[t]
            model.learn_many(keys, x[t], y[t])
        seconds = time.perf_counter() - t0
        out.append({"model": f"KeyedRegressor(learner={learner!r})", "keys": K, "ticks": K * T,
                    "mae": float(np.abs(err[T // 2 :]).mean()), "ticks_per_s": K * T / seconds})
    river = {k: river_linear() for k in keys}
    err = np.empty_like(y)
    t0 = time.perf_counter()
    for t in track(range(T), description="dict of River pipelines", console=console):
        for i, k in enumerate(keys):
            xi = dict(zip(names, x[t, i].tolist(), strict=True))
            err[t, i] = river[k].predict_one(xi) - y[t, i]
            river[k].learn_one(xi, float(y[t, i]))
    seconds = time.perf_counter() - t0
    out.append({"model": f"dict of {K:,} river StandardScaler | LinearRegression", "keys": K, "ticks": K * T,
                "mae": float(np.abs(err[T // 2 :]).mean()), "ticks_per_s": K * T / seconds})
    naive = x[:, :, 0] - y
    out.append({"model": "persistence (next = now)", "keys": K, "ticks": K * T,
                "mae": float(np.abs(naive[T // 2 :]).mean()), "ticks_per_s": None})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/river.json"))
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=200, help="ticks per key in the 1,000-keys part")
    args = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    kin = kin8nm_rows()
    t = Table("kin8nm, progressive_val_score", "NMSE", "ticks/s", title="River's API, one row at a time")
    for r in kin:
        t.add_row(r["model"], f"{r['nmse']:.4f}", f"{r['ticks_per_s']:,.0f}")
    console.print(t)
    keyed = keyed_rows(args.keys, args.ticks)
    t = Table(f"{args.keys:,} keys x {args.ticks} ticks", "MAE (second half)", "ticks/s", title="Many series at once")
    for r in keyed:
        t.add_row(r["model"], f"{r['mae']:.4f}", f"{r['ticks_per_s']:,.0f}" if r["ticks_per_s"] else "-")
    console.print(t)
    import river

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"river_version": river.__version__, "kin8nm": kin, "keyed": keyed}, indent=1))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
