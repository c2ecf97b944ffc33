"""Per-series online standardisation of the regressor x and the target d.

Exponentially weighted Welford: alpha_n = 1 / min(n + 1, horizon), so the first `horizon`
ticks give the exact running mean and variance and later ones forget slowly, letting a
drifting series keep unit scale. The standard deviation has a floor relative to the level
(sqrt(rel_floor * mean^2 + abs_floor)) so a flat start does not blow z-scores up, and
standardised inputs are clipped to +-clip; after a short warm-up each update's deviation is
clipped too (winsorised), so a single absurd value cannot blow the scale up. mode="none"
passes values through unchanged (for data already on a fixed scale, such as the benchmark
streams).

The arithmetic is numpy's (`apply`, `update`, on arrays that may be views of the bank's
tensors): it runs once per wave on a handful of small arrays, where a numpy operation costs a
quarter of a torch one (measured: 19 us against 79 us for an update of one key, 78 against 121
at 1,000 keys), and for a few keys at a high rate that per-operation cost is the wave's cost.
`norm_apply` / `norm_update` are the same functions on torch tensors. For a wave of few keys even
numpy's calls are most of the cost, so such a wave takes the same arithmetic as one compiled loop
over rows and columns (`models.jit`; `MAX_ROWS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from models.jit import NP_FLOAT, TORCH_FLOAT, Kernel

State = dict[str, torch.Tensor]
Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class NormConfig:
    mode: Literal["online", "none"] = "online"
    horizon: int = 2000
    clip: float = 8.0
    rel_floor: float = 1e-4
    abs_floor: float = 1e-8
    # after `robust_after` ticks each update's deviation is clipped to robust_z standard deviations
    # (a winsorised Welford step): one absurd value, which also passes through every lag of x,
    # cannot inflate the variance for thousands of ticks
    robust_after: int = 20
    robust_z: float = 8.0


def norm_init(B: int, p: int, dtype: torch.dtype) -> State:
    return {
        "n": torch.zeros(B, dtype=torch.int64),
        "x_mean": torch.zeros(B, p, dtype=dtype),  # [B, p]
        "x_var": torch.ones(B, p, dtype=dtype),  # [B, p]
        "d_mean": torch.zeros(B, dtype=dtype),  # [B]
        "d_var": torch.ones(B, dtype=dtype),  # [B]
        "d_sd": torch.ones(B, dtype=dtype),  # [B], kept so readers need no config
    }


def _sd(mean: np.ndarray, var: np.ndarray, c: NormConfig) -> np.ndarray:
    return np.sqrt(var + c.rel_floor * mean * mean + c.abs_floor)


def apply(st: Arrays, x: np.ndarray, c: NormConfig) -> np.ndarray:
    """Standardised, clipped x [B, p]."""
    if c.mode == "none":
        return x
    if _compiled(x):
        out = np.empty(x.shape, x.dtype)
        APPLY.compiled()(np.ascontiguousarray(x), *_contiguous(st["x_mean"], st["x_var"]), c.rel_floor, c.abs_floor,
                         c.clip, out)
        return out
    with np.errstate(all="ignore"):  # a non-finite input is the caller's to catch (the bank resets the key)
        return np.clip((x - st["x_mean"]) / _sd(st["x_mean"], st["x_var"], c), -c.clip, c.clip)


def update(st: Arrays, x: np.ndarray, d: np.ndarray, c: NormConfig) -> dict[str, np.ndarray]:
    """The statistics after one more tick (x [B, p], d [B]); `st` is not written."""
    n = st["n"] + 1
    if c.mode == "none":
        return {**st, "n": n}
    p = x.shape[1]
    if _compiled(x):
        B = x.shape[0]
        out = {"n": n, "x_mean": np.empty((B, p), x.dtype), "x_var": np.empty((B, p), x.dtype),
               "d_mean": np.empty(B, x.dtype), "d_var": np.empty(B, x.dtype), "d_sd": np.empty(B, x.dtype)}
        UPDATE.compiled()(n, np.ascontiguousarray(x), *_contiguous(d, st["x_mean"], st["x_var"], st["d_mean"],
                          st["d_var"]), c.horizon, c.rel_floor, c.abs_floor, c.robust_after, c.robust_z,
                          out["x_mean"], out["x_var"], out["d_mean"], out["d_var"], out["d_sd"])
        return out
    with np.errstate(all="ignore"):
        # x and d in one [B, p + 1] pass: the same arithmetic on each column
        v = np.concatenate([x, d[:, None]], axis=1)
        mean = np.concatenate([st["x_mean"], st["d_mean"][:, None]], axis=1)  # [B, p+1]
        var = np.concatenate([st["x_var"], st["d_var"][:, None]], axis=1)  # [B, p+1]
        a = (1.0 / np.minimum(n, c.horizon).astype(x.dtype))[:, None]  # [B, 1]
        delta = v - mean
        delta = np.where(np.isfinite(delta), delta, 0.0)  # a non-finite value moves nothing
        bound = c.robust_z * _sd(mean, var, c)
        delta = np.where((n > c.robust_after)[:, None], np.clip(delta, -bound, bound), delta)
        new_mean = mean + a * delta
        # the first tick sets the level; its variance stays the prior 1 until a second one
        new_var = np.where((n == 1)[:, None], var, (1 - a) * (var + a * delta * delta))
        d_sd = _sd(new_mean[:, p], new_var[:, p], c)
    return {"n": n, "x_mean": new_mean[:, :p], "x_var": new_var[:, :p], "d_mean": new_mean[:, p],
            "d_var": new_var[:, p], "d_sd": d_sd}


# A wave of at most this many keys takes the compiled loops (the loops' whole use: few keys at a high rate; in
# benchmarks/speed.py's compiled-loops table they were still ahead of numpy at 256 keys).
MAX_ROWS = 64


def _compiled(x: np.ndarray) -> bool:
    width = TORCH_FLOAT.get(x.dtype)
    return x.shape[0] <= MAX_ROWS and width is not None and APPLY.usable(width)


def _contiguous(*arrays: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(a) for a in arrays]


def _apply_rows(x, x_mean, x_var, rel_floor, abs_floor, clip, out):  # pragma: no cover - compiled
    """`apply`, one entry at a time: out [B, p] = clip((x - mean) / sd, -clip, clip); NaN stays NaN."""
    B, p = x.shape
    for b in range(B):
        for j in range(p):
            m = x_mean[b, j]
            v = (x[b, j] - m) / math.sqrt(x_var[b, j] + rel_floor * m * m + abs_floor)
            if v > clip:
                v = clip
            elif v < -clip:
                v = -clip
            out[b, j] = v


def _update_rows(n, x, d, x_mean, x_var, d_mean, d_var, horizon, rel_floor, abs_floor, robust_after, robust_z,
                 new_x_mean, new_x_var, new_d_mean, new_d_var, d_sd):  # pragma: no cover - compiled
    """`update`, one row at a time (n the ticks counted with this one): x's p columns, then d's, alike."""
    B, p = x.shape
    for b in range(B):
        a = 1.0 / min(n[b], horizon)
        for j in range(p + 1):
            if j < p:
                v, mean, var = x[b, j], x_mean[b, j], x_var[b, j]
            else:
                v, mean, var = d[b], d_mean[b], d_var[b]
            delta = v - mean
            if math.isnan(delta) or math.isinf(delta):  # a non-finite value moves nothing (not isfinite: see jit)
                delta = 0.0
            if n[b] > robust_after:
                bound = robust_z * math.sqrt(var + rel_floor * mean * mean + abs_floor)
                if bound != bound:  # as numpy's clip: a NaN bound gives NaN
                    delta = bound
                elif delta > bound:
                    delta = bound
                elif delta < -bound:
                    delta = -bound
            new_mean = mean + a * delta
            new_var = var if n[b] == 1 else (1 - a) * (var + a * delta * delta)
            if j < p:
                new_x_mean[b, j], new_x_var[b, j] = new_mean, new_var
            else:
                new_d_mean[b], new_d_var[b] = new_mean, new_var
                d_sd[b] = math.sqrt(new_var + rel_floor * new_mean * new_mean + abs_floor)


def _warm_up(dtype: torch.dtype) -> None:
    """Run both loops once for this float width, on one key of one column (compiling or loading them)."""
    dt = NP_FLOAT[dtype]
    one, row = (lambda: np.ones(1, dt)), (lambda: np.ones((1, 1), dt))
    APPLY.compiled()(row(), row(), row(), 1e-4, 1e-8, 8.0, row())
    UPDATE.compiled()(np.ones(1, np.int64), row(), one(), row(), row(), one(), one(), 2000, 1e-4, 1e-8, 20, 8.0,
                      row(), row(), one(), one(), one())


APPLY = Kernel(_apply_rows, _warm_up, "normaliser")
UPDATE = Kernel(_update_rows, _warm_up, "normaliser")


def norm_apply(st: State, x: torch.Tensor, c: NormConfig) -> torch.Tensor:
    """`apply` on tensors."""
    if c.mode == "none":
        return x
    return torch.from_numpy(apply({k: v.numpy() for k, v in st.items()}, x.numpy(), c))


def norm_update(st: State, x: torch.Tensor, d: torch.Tensor, c: NormConfig) -> State:
    """`update` on tensors."""
    out = update({k: v.numpy() for k, v in st.items()}, x.numpy(), d.numpy(), c)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
