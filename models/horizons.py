"""Forecasts h > 1 ticks ahead, learned from delayed labels only: one linear read-out per horizon.

A key's learner forecasts the next value. For each further horizon h the bank keeps a read-out

    y_hat(t + h | t) = w_h^T z_t,    z_t = [x_t (normalised regressor), m_t, 1]            [q]

where m_t is the learner's own one-step forecast from x_t (so the read-out starts from what the
recurrent model knows, and the regressor gives it the lags to extrapolate from). w_h is learned by
recursive least squares (`models.kalman`, the filter every learner here shares) on the pair
(z_t, y_{t+h}), and only when y_{t+h} arrives: z_t waits in a ring buffer of the key's last
H = max(h) regressors, with the normaliser's level and scale at t (the target is put on the scale
the forecast was made on) and the forecast that was published from it (so the error scored is the
published one). Nothing used at t depends on a tick after t: the weights that forecast from z_t
have learned from targets up to y_t only, by construction (a test checks it, learner by learner).

Through the recurrent weights too (`cell_r` > 0, every learner with them: `models.learners.base.
LearnsFromHorizons`): y_hat(t+h|t) depends on theta through m_t, so its Jacobian is w_h[m] H_t, H_t =
d m_t / d theta the learner's own at t. Each pending forecast keeps H_t and H_t . theta_t ([n] + 1
numbers per slot), and when y_{t+h} arrives the learner takes the error, linearised about today's theta,

    e' = (y_{t+h} - y_hat(t+h|t)) - w_h[m] (H_t . theta_now - H_t . theta_t)

as one more measurement with the row w_h[m] H_t and noise cell_r x its own x the horizon's calibrated
variance (normalised, at least 1): the targets due at a tick are a vector innovation with an m x n
Jacobian, taken entry by entry (`learn_from`). The EKF and DEKF take it as a Kalman measurement update,
SGD as one more bounded descent step, the PF through each particle's own diagonal EKF along the
Jacobian of its mixture mean (a shift common to the particles, which resampling leaves well defined),
the ensemble through each such expert with its mixture weight's share. Off by default: measured on
ETTh1 (benchmarks/horizon_variants.py, RESULTS "Multi-horizon"), at 1x their own noise it costs every
learner's one-step forecast 3.5-97% for at most 1% at 24 and 48 h; at 10x the one-step forecast moves
by -1.3% (the EKF) to +7% (SGD) and 24 and 48 h by -0.5% to +0.3%, the default ensemble level
everywhere, for 4 bytes x n x max(h) a key and one more update per horizon and tick. The recurrent
weights learn from the one-step labels, which arrive first and are most of the signal.

The intervals are calibrated per horizon in two steps. A running mean of e^2 / var sets their scale,
as the bank's one-step calibration does. An h-step error is known only h ticks late, and errors of
overlapping horizons are correlated, so that alone covers less than 90% at long horizons (0.875 at
48 h on ETTh1). So each horizon's half-width also carries a factor exp(s) that adaptive conformal
inference tunes (Gibbs & Candes, NeurIPS 2021): s += gamma (miss - alpha) each time a target comes due,
alpha the nominal miss rate. Whatever the errors' distribution, the long-run share of misses is then
alpha within (max |s| + gamma) / (gamma n) after n targets, delayed feedback included.

State of B keys, m = len(horizons), H = max(horizons), q = regressor width + 2:
    z [B, H, q], mu, sd [B, H]     the pending regressors, and the target scale at each
    f, v, r [B, H, m]              published forecast (normalised), its calibrated and raw variance
    w [B, m, q], P [B, m, q, q]    each horizon's read-out and its RLS covariance
    lam [B, m]                     calibration factor
    s [B, m]                       log of the conformal factor of the half-width
    pushes [B]                     regressors pushed (slot = pushes mod H)
    hits, scored [B, m]            published intervals that held their target, targets scored
    J [B, H, n], Js [B, H]         cell_r > 0 only: each pending forecast's H_t and H_t . theta_t
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from models import kalman

State = dict[str, torch.Tensor]
Array = TypeVar("Array", torch.Tensor, np.ndarray)


@dataclass(frozen=True)
class HorizonConfig:
    horizons: tuple[int, ...] = ()  # every h > 1 (h = 1 is the learner's own forecast)
    delta: float = 100.0  # P_0 = delta I: a vague start, the read-out follows the data within ~q targets
    # RLS forgetting: a memory of ~2,000 targets, so a read-out follows a drifting series (measured on ETTh1
    # against 1, 0.999 and 0.998: benchmarks/horizon_variants.py, RESULTS "Multi-horizon")
    lam: float = 0.9995
    calib_decay: float = 0.02  # as the bank's calibration of the one-step interval
    coverage_step: float = 0.01  # gamma of the conformal factor (0: variance calibration alone)
    # |s| <= this: the factor stays within 1/10..10 of the variance calibration. Unbounded, a long
    # stretch of exact forecasts (a frozen sensor) drives s down by gamma alpha a tick, and the
    # interval then takes thousands of misses to grow back (the variance calibration recovers in a few)
    coverage_bound: float = math.log(10.0)
    # > 0: the learner's recurrent weights learn from each due horizon's error too, with this multiple of its
    # own noise (scaled by the horizon's variance); 0: the read-outs alone learn from them (see the module doc)
    cell_r: float = 0.0

    def __post_init__(self) -> None:
        if any(h < 2 for h in self.horizons) or list(self.horizons) != sorted(set(self.horizons)):
            raise ValueError(f"horizons beyond the next tick are distinct and increasing, > 1: got {self.horizons}")
        if self.cell_r < 0:
            raise ValueError(f"cell_r is a noise multiple, >= 0: got {self.cell_r}")


def parse_horizons(spec: str | Sequence[int]) -> tuple[int, ...]:
    """"1,6,24" (or a sequence) -> (1, 6, 24): distinct, increasing, each in 1..10,000; 1 always first."""
    items = [int(v) for v in spec.split(",") if v.strip()] if isinstance(spec, str) else [int(v) for v in spec]
    bad = [h for h in items if not 1 <= h <= 10_000]
    if bad or not items:
        raise ValueError(f"horizons are ticks ahead, each in 1..10000: got {spec!r}")
    return tuple(sorted({1, *items}))


def init_state(B: int, p: int, config: HorizonConfig, dtype: torch.dtype, n_theta: int = 0) -> State:
    """The read-outs' state of B keys with regressors of width p (`n_theta`: the learner's `n_learned`, for
    cell_r > 0)."""
    m, H, q = len(config.horizons), max(config.horizons), p + 2
    cell = {"J": torch.zeros(B, H, n_theta, dtype=dtype), "Js": torch.zeros(B, H, dtype=dtype)} if config.cell_r else {}
    return {**cell,
        "z": torch.zeros(B, H, q, dtype=dtype),
        "mu": torch.zeros(B, H, dtype=dtype),
        "sd": torch.ones(B, H, dtype=dtype),
        "f": torch.zeros(B, H, m, dtype=dtype),
        "v": torch.ones(B, H, m, dtype=dtype),
        "r": torch.ones(B, H, m, dtype=dtype),
        "w": torch.zeros(B, m, q, dtype=dtype),
        "P": (config.delta * torch.eye(q, dtype=dtype)).expand(B, m, q, q).clone(),
        "lam": torch.ones(B, m, dtype=dtype),
        "s": torch.zeros(B, m, dtype=dtype),
        "pushes": torch.zeros(B, dtype=torch.int64),
        "hits": torch.zeros(B, m, dtype=torch.int64),
        "scored": torch.zeros(B, m, dtype=torch.int64),
    }


def miss_rate(z_score: float) -> float:
    """The nominal two-sided miss rate of an interval of +- z_score standard deviations."""
    return math.erfc(z_score / math.sqrt(2))


def conformal(s: Array, miss: Array, z_score: float, step: float, bound: float) -> Array:
    """Adaptive conformal inference (Gibbs & Candes 2021) on the log s of an interval's half-width factor:
    s + gamma (miss - alpha), alpha the nominal two-sided miss rate of +- z_score, |s| <= bound. The long-run
    share of misses is alpha whatever the errors' distribution. s, miss (1 a miss, 0 a hit, in s's dtype):
    any shape, alike; torch tensors or numpy arrays (the bank's bookkeeping is numpy)."""
    return (s + step * (miss - miss_rate(z_score))).clip(-bound, bound)


def regressor(xn: torch.Tensor, mean_n: torch.Tensor) -> torch.Tensor:
    """z_t = [x_t, m_t, 1]: x [B, p], m [B] -> [B, p + 2]."""
    return torch.cat([xn, mean_n.unsqueeze(1), torch.ones_like(mean_n).unsqueeze(1)], dim=1)


def forecast(st: State, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each horizon's forecast from z [B, q], normalised: (mean [B, m], published var [B, m], raw var [B, m]).
    The published variance is the calibrated one times exp(2 s), so that mean +- z sqrt(var) is the interval."""
    w, P = st["w"], st["P"]  # [B, m, q], [B, m, q, q]
    zm = z.unsqueeze(1).expand(-1, w.shape[1], -1)  # [B, m, q]
    mean = (w * zm).sum(-1)  # [B, m]
    raw = 1.0 + (zm * torch.matmul(P, zm.unsqueeze(-1)).squeeze(-1)).sum(-1)  # [B, m]  1 + z^T P z
    return mean, st["lam"] * raw * torch.exp(2 * st["s"]), raw


def step(st: State, z: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor, d: torch.Tensor, learn: torch.Tensor,
         config: HorizonConfig, z_score: float, jac: tuple[torch.Tensor, torch.Tensor] | None = None
         ) -> dict[str, torch.Tensor]:
    """A tick of B keys, in place on `st`: forecast every horizon from z_t [B, q] (target scale mu, sd [B]),
    keep z_t pending, then score and learn the forecasts whose target is this tick's value d [B]
    (`learn` [B] bool: False holds the tick out, as the bank does with a far one). `jac` (cell_r > 0):
    (H_t [B, n], theta_t [B, n]), the learner's Jacobian of m_t and the theta it was taken at.

    Returns the forecasts made now (mean, var [B, m], original scale) and the scoring of the ones that
    came due: their error d - forecast and whether the published interval held d ([B, m]; NaN and False
    where no forecast of that horizon came due). With `jac`, also what `cell_measurement` needs."""
    hs = torch.tensor(config.horizons, dtype=torch.int64)  # [m]
    m, H = len(config.horizons), st["z"].shape[1]
    mean_n, var_n, raw = forecast(st, z)  # [B, m] each
    sd2 = sd.unsqueeze(1)  # [B, 1]
    out = {"mean": mu.unsqueeze(1) + sd2 * mean_n, "var": var_n * sd2 * sd2}  # [B, m]
    # keep z_t (and what was published from it) until its targets arrive
    rows = torch.arange(z.shape[0])
    slot = st["pushes"] % H  # [B]
    st["z"][rows, slot] = z
    st["mu"][rows, slot], st["sd"][rows, slot] = mu, sd
    st["f"][rows, slot], st["v"][rows, slot], st["r"][rows, slot] = mean_n, var_n, raw
    if jac is not None:
        st["J"][rows, slot] = jac[0]
        st["Js"][rows, slot] = (jac[0] * jac[1]).sum(1)
    st["pushes"] += 1
    # the forecast of horizon h that comes due now was made h - 1 pushes before this one
    back = st["pushes"].unsqueeze(1) - hs.unsqueeze(0)  # [B, m]  its push number (0-based)
    due = (back >= 0) & learn.unsqueeze(1)  # [B, m]
    at = back.clamp(min=0) % H  # [B, m]  its slot
    rr = rows.unsqueeze(1)  # [B, 1]
    zi = st["z"][rr, at]  # [B, m, q]
    mu_i, sd_i = st["mu"][rr, at], st["sd"][rr, at]  # [B, m]
    hm = torch.arange(m).unsqueeze(0)  # [1, m]
    f_i, v_i, r_i = st["f"][rr, at, hm], st["v"][rr, at, hm], st["r"][rr, at, hm]  # [B, m]
    y = (d.unsqueeze(1) - mu_i) / sd_i  # [B, m]  the target on its forecast's scale
    e_pub = y - f_i  # [B, m]  the published forecast's error
    lam = st["lam"]
    ratio = torch.clamp(e_pub * e_pub / r_i, max=1e6)
    st["lam"] = torch.where(due, (1 - config.calib_decay) * lam + config.calib_decay * ratio, lam)
    inside = e_pub.abs() <= z_score * v_i.sqrt()
    hit = due & inside
    s_new = conformal(st["s"], (~inside).to(y.dtype), z_score, config.coverage_step, config.coverage_bound)
    st["s"] = torch.where(due, s_new, st["s"])
    st["hits"] += hit
    st["scored"] += due
    # RLS on (z_i, y) for the due ones: an H of zeros leaves P and w as they are (S = R, gain 0)
    H_obs = zi * due.unsqueeze(-1)  # [B, m, q]
    e_now = torch.where(due, y - (st["w"] * zi).sum(-1), torch.zeros_like(y))  # [B, m]  with today's weights
    R = torch.full_like(y, config.lam)  # [B, m]  RLS as a Kalman filter: R = lam, then P / lam
    (dw,), _ = kalman.update([(st["P"], H_obs)], e_now, R)
    st["w"] += dw
    if config.lam != 1.0:
        P = st["P"]
        P.div_(torch.where(due, config.lam, 1.0).unsqueeze(-1).unsqueeze(-1))
        # forgetting inflates P along directions the regressors never move in (RLS wind-up): no
        # variance is let grow past the prior's
        top = P.diagonal(dim1=-2, dim2=-1).amax(-1)  # [B, m]
        P.mul_(torch.clamp(config.delta / top, max=1.0).unsqueeze(-1).unsqueeze(-1))
    out["error"] = torch.where(due, sd_i * e_pub, torch.full_like(y, float("nan")))  # [B, m] original units
    out["hit"] = hit
    if jac is not None:
        q = zi.shape[-1]
        out.update({"cell.due": due, "cell.e": torch.where(due, e_pub, torch.zeros_like(e_pub)),  # [B, m]
                    "cell.J": st["J"][rr, at], "cell.Js": st["Js"][rr, at],  # [B, m, n], [B, m]
                    "cell.w_m": st["w"][:, :, q - 2],  # [B, m]  each read-out's weight on m_t
                    "cell.ratio": torch.clamp(st["lam"] * r_i, min=1.0)})  # [B, m]  calibrated variance, normalised
    return out


def cell_measurement(out: dict[str, torch.Tensor], j: int, theta: torch.Tensor, config: HorizonConfig
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Horizon j's due errors (from `step`'s `out`) as a measurement of theta [B, n] (as it is now, after the
    horizons before j): (row H [B, n], innovation e' [B], noise multiple [B]) for the learner's `learn_from`;
    a row is zero where nothing came due. The caller takes the horizons one after another (a handful, each
    batched over keys)."""
    w = out["cell.w_m"][:, j] * out["cell.due"][:, j]  # [B]
    J = out["cell.J"][:, j]  # [B, n]  H_t of the forecast that came due
    e = out["cell.e"][:, j] - w * ((J * theta).sum(1) - out["cell.Js"][:, j])  # [B]  linearised about today's theta
    return J * w.unsqueeze(1), e, config.cell_r * out["cell.ratio"][:, j]


def healthy(st: State) -> torch.Tensor:
    """Bool [B]: the read-outs and their calibration are finite."""
    B = st["w"].shape[0]
    return (torch.isfinite(st["w"].reshape(B, -1)).all(1) & torch.isfinite(st["P"].reshape(B, -1)).all(1)
            & torch.isfinite(st["lam"]).all(1) & torch.isfinite(st["s"]).all(1))
