"""The ModelBank's own bookkeeping of a wave as compiled loops (`models.jit`), for waves of few keys.

Around the learner's step the bank standardises the target, decides which ticks are held out (a spike, or
the lags that carry one), then calibrates the prediction, forms its interval, moves the calibration, the
conformal factor and the counters, and checks what came out finite (`ModelBank._step_rows_lean`). In numpy
that is some fifty operations on arrays of B numbers, a microsecond or so each, so for a few keys it is a
fixed cost of tens of microseconds a wave; each loop here is one call. They are compiled without fast-math
flags: the same element-wise arithmetic in the same order and float width as numpy's, so the numbers are
numpy's to the bit (the one exp is numpy's, taken before the loop: LLVM's may differ in its last bit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from models import horizons as hz
from models.jit import NP_FLOAT, TORCH_FLOAT, Kernel

if TYPE_CHECKING:
    from models.bank import BankConfig

# A wave of at most this many keys takes the loops; wider, numpy's passes over the arrays are as quick
# (`benchmarks/speed.py`'s compiled-loops table).
MAX_ROWS = 64


def serves(dtype: np.dtype, rows: int) -> bool:
    """Whether a wave of `rows` keys in this float width takes the loops."""
    width = TORCH_FLOAT.get(dtype)
    return rows <= MAX_ROWS and width is not None and all(k.usable(width) for k in KERNELS)


def before(da: np.ndarray, mu: np.ndarray, sd: np.ndarray, xn: np.ndarray, first: np.ndarray, online: bool,
           config: BankConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dn, far, hold) [B]: the standardised target, and which ticks are far from the level and which are held out
    (`ModelBank._step_rows_lean`)."""
    B = len(da)
    dn, far, hold = np.empty(B, da.dtype), np.empty(B, np.bool_), np.empty(B, np.bool_)
    t = da.dtype.type  # the bounds in the arrays' width, as numpy compares them
    BEFORE.compiled()(da, mu, sd, xn, first, online, t(config.shift_z), t(config.norm.clip), dn, far, hold)
    return dn, far, hold


def after(book: dict[str, np.ndarray], mu: np.ndarray, sd: np.ndarray, dn: np.ndarray, da: np.ndarray,
          xa: np.ndarray, mean_n: np.ndarray, var_raw: np.ndarray, first: np.ndarray, hold: np.ndarray,
          far: np.ndarray, config: BankConfig) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """After the learner's step: ((mean, var, lower, upper) on the original scale, the counters and calibration
    after the tick (b.*, the normaliser's apart), and which rows broke, the learner's health apart)."""
    B, dt = len(da), da.dtype
    out = {k: np.empty(B, dt) for k in ("mean", "var", "lower", "upper")}
    new = {"b.lam": np.empty(B, dt), "b.s": np.empty(B, dt), "b.shift": np.empty(B, np.int64),
           "b.ticks": np.empty(B, np.int64), "b.hits": np.empty(B, np.int64)}
    bad = np.empty(B, np.bool_)
    c, t = config, dt.type
    alpha = t(hz.miss_rate(c.z))  # `horizons.conformal`'s alpha
    # in the arrays' width, as numpy takes Python numbers: s moves by step * (miss - alpha), miss 1 or 0
    cfg = np.array([c.z, 1 - c.calib_decay, c.calib_decay, c.coverage_step, t(1) - alpha, -alpha, c.coverage_bound,
                    1e6], dt)
    with np.errstate(all="ignore"):
        widen = np.exp(2 * book["b.s"])  # [B] the conformal factor squared
    AFTER.compiled()(mu, sd, dn, da, xa, np.ascontiguousarray(mean_n, dt), np.ascontiguousarray(var_raw, dt),
                     book["b.lam"], book["b.s"], widen, book["b.shift"], book["b.ticks"], book["b.hits"], first, hold,
                     far, cfg, c.shift_ticks, out["mean"], out["var"], out["lower"], out["upper"], new["b.lam"],
                     new["b.s"], new["b.shift"], new["b.ticks"], new["b.hits"], bad)
    new["b.resets"] = book["b.resets"]
    return out, new, bad


def _before_rows(da, mu, sd, xn, first, online, shift_z, clip, dn, far, hold):  # pragma: no cover - compiled
    """`before`, one key at a time: dn = (d - mu) / sd; far: |dn| > shift_z; hold: far, or a lag at the clip."""
    B, p = xn.shape
    for b in range(B):
        dn[b] = (da[b] - mu[b]) / sd[b]
        settled = online and not first[b]
        far[b] = settled and abs(dn[b]) > shift_z
        clipped = False
        for j in range(p):
            if abs(xn[b, j]) >= clip:
                clipped = True
        hold[b] = far[b] or (clipped and settled)


def _after_rows(mu, sd, dn, da, xa, mean_n, var_raw, lam, s, widen, shift, ticks, hits, first, hold, far, cfg,
                shift_ticks, mean, var, lower, upper, lam_out, s_out, shift_out, ticks_out, hits_out,
                bad):  # pragma: no cover - compiled
    """`after`, one key at a time, in numpy's order of operations (see `ModelBank._step_rows_lean`)."""
    z, keep, calib_decay, step, missed, covered, bound, most = cfg[0], cfg[1], cfg[2], cfg[3], cfg[4], cfg[5], \
        cfg[6], cfg[7]
    B, p = xa.shape
    for b in range(B):
        var_n = lam[b] * widen[b] * var_raw[b]  # calibrated, and widened to the coverage
        m = mu[b] + sd[b] * mean_n[b]
        v = var_n * sd[b] * sd[b]
        half = z * np.sqrt(v)
        lo, up = m - half, m + half
        mean[b], var[b], lower[b], upper[b] = m, v, lo, up
        e_n = dn[b] - mean_n[b]
        shift_out[b] = shift[b] + 1 if far[b] else 0
        ratio = e_n * e_n / var_raw[b]
        if ratio > most:  # as np.minimum: NaN stays NaN
            ratio = most
        held = first[b] or hold[b]
        lam_out[b] = lam[b] if held else keep * lam[b] + calib_decay * ratio
        ticks_out[b] = ticks[b] + 1
        inside = da[b] >= lo and da[b] <= up
        aci = s[b] + step * (covered if inside else missed)
        if aci > bound:  # as np.clip: NaN stays NaN
            aci = bound
        elif aci < -bound:
            aci = -bound
        s_out[b] = s[b] if held else aci
        hits_out[b] = hits[b] + (1 if inside else 0)
        broken = not (np.isfinite(mean_n[b]) and np.isfinite(var_n) and np.isfinite(lam_out[b]) and np.isfinite(da[b]))
        for j in range(p):
            if not np.isfinite(xa[b, j]):
                broken = True
        bad[b] = broken or shift_out[b] >= shift_ticks


def _warm_up(dtype: torch.dtype) -> None:
    """Run both loops once for this float width, on one key of one lag (compiling or loading them)."""
    from models.bank import BankConfig

    dt = NP_FLOAT[dtype]
    one, no = (lambda: np.ones(1, dt)), (lambda: np.zeros(1, np.bool_))
    dn, far, hold = before(one(), one(), one(), np.ones((1, 1), dt), no(), True, BankConfig())
    book = {"b.lam": one(), "b.s": one(), **{f"b.{k}": np.zeros(1, np.int64) for k in ("shift", "ticks", "hits",
                                                                                       "resets")}}
    after(book, one(), one(), dn, one(), np.ones((1, 1), dt), one(), one(), no(), hold, far, BankConfig())


BEFORE = Kernel(_before_rows, _warm_up, "bank's bookkeeping", flags=set())
AFTER = Kernel(_after_rows, _warm_up, "bank's bookkeeping", flags=set())
KERNELS = (BEFORE, AFTER)
