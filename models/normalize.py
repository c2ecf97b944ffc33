"""Per-series online standardisation of the regressor x and the target d.

Exponentially weighted Welford: alpha_n = 1 / min(n + 1, horizon), so the first `horizon`
ticks give the exact running mean and variance and later ones forget slowly, letting a
drifting series keep unit scale. The standard deviation has a floor relative to the level
(sqrt(rel_floor * mean^2 + abs_floor)) so a flat start does not blow z-scores up, and
standardised inputs are clipped to +-clip; after a short warm-up each update's deviation is
clipped too (winsorised), so a single absurd value cannot blow the scale up. mode="none"
passes values through unchanged (for data already on a fixed scale, such as the benchmark
streams).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

State = dict[str, torch.Tensor]


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


def _sd(mean: torch.Tensor, var: torch.Tensor, c: NormConfig) -> torch.Tensor:
    return torch.sqrt(var + c.rel_floor * mean * mean + c.abs_floor)


def norm_apply(st: State, x: torch.Tensor, c: NormConfig) -> torch.Tensor:
    if c.mode == "none":
        return x
    return torch.clamp((x - st["x_mean"]) / _sd(st["x_mean"], st["x_var"], c), -c.clip, c.clip)


def norm_update(st: State, x: torch.Tensor, d: torch.Tensor, c: NormConfig) -> State:
    if c.mode == "none":
        return {**st, "n": st["n"] + 1}
    n = st["n"] + 1
    alpha = 1.0 / torch.clamp(n, max=c.horizon).to(x.dtype)  # [B]
    out: State = {"n": n}
    for name, v in (("x", x), ("d", d)):
        mean, var = st[f"{name}_mean"], st[f"{name}_var"]
        a = alpha.view(-1, *([1] * (v.dim() - 1)))
        delta = torch.nan_to_num(v - mean, nan=0.0, posinf=0.0, neginf=0.0)
        settled = (n > c.robust_after).view_as(a)
        bound = c.robust_z * _sd(mean, var, c)
        delta = torch.where(settled, torch.clamp(delta, -bound, bound), delta)
        out[f"{name}_mean"] = mean + a * delta
        # the first tick sets the level; its variance stays the prior 1 until a second one
        first = (n == 1).view_as(a)
        out[f"{name}_var"] = torch.where(first, var, (1 - a) * (var + a * delta * delta))
    out["d_sd"] = _sd(out["d_mean"], out["d_var"], c)
    return out
