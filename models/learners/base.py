"""The Learner protocol: one object, many series, all state in explicit tensors.

A learner holds no per-key data itself. Its state for B series is a `State`: a dict of
tensors whose first dimension is the series, so the ModelBank can gather, scatter, drop,
snapshot and restore rows without knowing what the learner keeps (River's small interface,
applied to a bank of series).

    predict(state, x)          -> (mean [B], var [B])       pure: state is not touched
    step(state, x, d)          -> (mean [B], var [B], state) the prediction made *before*
                                                             the label, then the update
    update(state, x, d)        -> state                     step without the prediction

`step` may update the tensors of the state it is given in place; pass a copy to keep the old.
Means and variances are on the learner's (normalised) scale. `x` is [B, p], `d` is [B].

A learner whose prediction already computes what its next update needs (the EKF's Jacobian at x)
sets `memoises = True` and takes an optional `memo` dict in both: `predict(state, x, memo)` leaves
its intermediates there, and `step(state, x, d, memo)` uses them instead of computing them again.
The caller owns the promise that makes that valid: the same state rows, unchanged since, and the
same x (the ModelBank keeps it; a streaming predict-then-learn pays for one Jacobian a tick, not two).
Rows are independent, so a step of some of the predicted rows may use their part of the memo
(`memo_rows`), where every tensor in it has the series first.

A learner whose steps never record an autograd graph says so with `autograd = False`; the
ModelBank then runs it under `torch.inference_mode`, which skips autograd's bookkeeping on every
torch call (`uses_autograd`; a learner that does not say is taken to use it).
"""

from __future__ import annotations

from typing import Annotated, Protocol, runtime_checkable

import numpy as np
import torch
from annotated_types import Ge, Gt, Interval

from models import rng
from models.cells import NetSpec, init_theta
from models.jit import NP_FLOAT, Kernel, memory  # NP_FLOAT: a learner's float width, for its numpy bookkeeping

State = dict[str, torch.Tensor]

# The ranges of the learners' config fields. Plain dataclasses ignore them; whoever takes configs from
# users (the daemon's STREAMER_LEARNER_OPTIONS) checks them with pydantic, which reads these markers.
Positive = Annotated[float, Gt(0)]
NonNegative = Annotated[float, Ge(0)]
Share = Annotated[float, Interval(gt=0, le=1)]  # (0, 1]: a weight, a forgetting factor
Count = Annotated[int, Ge(1)]


def uses_autograd(learner: object) -> bool:
    """Whether a learner's predict or step may record an autograd graph (its `autograd`, True when unsaid)."""
    return bool(getattr(learner, "autograd", True))


def added_state(learner: object) -> tuple[str, ...]:
    """The learner's state tensors that a snapshot written before they existed lacks (its `added_state`,
    none when unsaid): each starts at zero, as a new key's does, when the bank restores such a snapshot, so
    an upgrade keeps the rest of a key's learned state."""
    return tuple(getattr(learner, "added_state", ()))


@runtime_checkable
class Learner(Protocol):
    name: str
    spec: NetSpec

    def init_state(self, seeds: torch.Tensor, theta0: torch.Tensor | None = None) -> State:
        """Cold (theta0 None) or warm-started state for len(seeds) series: theta0 [n_theta] for all, or [B, n_theta]."""
        ...

    def predict(self, state: State, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def step(self, state: State, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, State]: ...

    def update(self, state: State, x: torch.Tensor, d: torch.Tensor) -> State: ...

    def healthy(self, state: State) -> torch.Tensor:
        """Bool [B]: the series' state is finite (checked on small tensors only)."""
        ...


@runtime_checkable
class LearnsFromHorizons(Protocol):
    """A learner whose weights can learn from the errors of the forecasts further ahead too (`models.horizons`,
    `HorizonConfig.cell_r` > 0). Those forecasts are linear read-outs of the learner's one-step forecast m_t,
    so their Jacobian is the read-out's weight on m_t times J_t = d m_t / d theta, taken at t and kept pending
    until the target arrives h ticks later; the error then comes in as one more measurement of theta:

        jacobian(state, x, memo)    -> J_t [B, n_learned]     d m_t / d theta of the forecast from x
        learned_weights(state)      -> theta [B, n_learned]    what J_t is linearised about
        learn_from(state, H, e, r)  -> None, in place          one measurement: row H [B, n_learned],
                                                               innovation e [B], noise r [B] x the learner's own
    A zero row of H leaves that series as it is. Each learner makes the update its own way: the Kalman
    filters' measurement update, SGD's step, the particles' own EKF steps, the ensemble's experts'."""

    n_learned: int

    def jacobian(self, state: State, x: torch.Tensor, memo: dict | None = None) -> torch.Tensor: ...

    def learned_weights(self, state: State) -> torch.Tensor: ...

    def learn_from(self, state: State, H: torch.Tensor, e: torch.Tensor, r_scale: torch.Tensor) -> None: ...


class _NotBatch(Exception):
    """A memo tensor without the series first (`memo_rows`)."""


def memo_rows(memo: object, idx: torch.Tensor, B: int) -> object | None:
    """The part of a memo of B series that is the series `idx` [k]'s: every tensor in it (in dicts, tuples
    and lists, at any depth) indexed along its first dimension. None when a tensor in it does not have
    the B series first (the particle filter's flattened [B * N] intermediates), so the caller recomputes."""

    def take(v: object) -> object:
        if isinstance(v, torch.Tensor):
            if v.dim() == 0 or v.shape[0] != B:
                raise _NotBatch
            return v.index_select(0, idx)
        if isinstance(v, dict):
            return {k: take(u) for k, u in v.items()}
        if isinstance(v, (tuple, list)):
            return type(v)(take(u) for u in v)
        return v  # numbers, None, strings: not per series

    try:
        return take(memo)
    except _NotBatch:
        return None


def anneal_fraction(t: torch.Tensor, steps: int) -> np.ndarray:
    """How far each series is through a `steps`-tick schedule: t / steps, at most 1. t [B] -> [B] float64.
    In numpy: a few operations on B counters, a third of torch's cost each where few keys make it count."""
    if steps <= 0:
        return np.ones(t.shape, dtype=np.float64)
    return np.minimum(t.numpy() / steps, 1.0)


def linear_anneal(t: torch.Tensor, start: float, end: float, steps: int) -> np.ndarray:
    """start -> end linearly over `steps` ticks of each series, then constant. t [B] -> [B] float64."""
    return start + (end - start) * anneal_fraction(t, steps)


class FiniteTensors:
    """`healthy` as "every entry of each row of `health_tensors` is finite" (`rows_finite`). A learner that names the
    tensors it is judged by lets a mixture of learners check all of its experts' in one call (the ensemble)."""

    def health_tensors(self, state: State) -> tuple[torch.Tensor, ...]:
        """The tensors [B, ...] whose rows must stay finite (small ones: a covariance by its diagonal)."""
        raise NotImplementedError

    def healthy(self, state: State) -> torch.Tensor:
        """Bool [B]: the series' state is finite."""
        return rows_finite(*self.health_tensors(state))


def rows_finite(*tensors: torch.Tensor) -> torch.Tensor:
    """Bool [B]: every entry of each row of every tensor is finite.

    One pass per tensor: a row holding NaN or +-inf sums to NaN or +-inf (a finite row whose
    sum overflows is reported too, and is as much a sign of trouble). Summed by numpy, whose
    per-call cost is a fraction of torch's for the few-keys waves where it shows; for a few rows,
    by a compiled loop, one call a tensor (`FINITE_MAX_ROWS`)."""
    first = tensors[0]
    if first.shape[0] <= FINITE_MAX_ROWS and all(t.dtype == first.dtype for t in tensors) \
            and FINITE.usable(first.dtype):
        ok = np.ones(first.shape[0], np.bool_)
        loop = FINITE.compiled()
        for t in tensors:
            a = memory(t)
            loop(a if a.ndim == 2 else a.reshape(a.shape[0], -1), ok)
        return torch.from_numpy(ok)
    with np.errstate(all="ignore"):
        ok = np.isfinite(_row_sums(first))
        for t in tensors[1:]:
            ok &= np.isfinite(_row_sums(t))
    return torch.from_numpy(ok)


# A health check of at most this many rows takes the compiled loop: per tensor one call where numpy makes three
# (sum, isfinite, and), and no floating-point error state to set and restore (`benchmarks/speed.py`).
FINITE_MAX_ROWS = 64


def _finite_rows(a, ok):  # pragma: no cover - compiled
    """`rows_finite` of one tensor as [B, n]: ok[b] turns False where row b sums to NaN or +-inf (in a's width, in
    order; compiled without fast-math flags, so the sum is not reassociated and isfinite is not folded)."""
    B, n = a.shape
    if n == 0:
        return
    for b in range(B):
        s = a[b, 0]
        for j in range(1, n):
            s += a[b, j]
        if not np.isfinite(s):
            ok[b] = False


def _finite_warm_up(dtype: torch.dtype) -> None:
    """Run the loop once for this float width, on one row of one number (compiling or loading it)."""
    FINITE.compiled()(np.ones((1, 1), NP_FLOAT[dtype]), np.ones(1, np.bool_))


FINITE = Kernel(_finite_rows, _finite_warm_up, "health check", flags=set())


def _row_sums(t: torch.Tensor) -> np.ndarray:
    """Each row's sum [B] (numpy's reduction called directly: its Python wrapper is a third of the cost here)."""
    a = memory(t)
    return a if a.ndim == 1 else _add_reduce(a.reshape(a.shape[0], -1), axis=1)


_add_reduce = np.add.reduce


def cold_theta(spec: NetSpec, seeds: torch.Tensor, scale: float, gate_bias: float, dtype: torch.dtype) -> torch.Tensor:
    """Initial theta [B, n_theta] of each series, drawn from its own seed (see `models.cells.init_theta`)."""
    z = rng.normal_rows(seeds, torch.zeros_like(seeds), rng.STREAM_INIT, 1, spec.n_theta, dtype)  # [B, 1, n]
    return init_theta(spec, z[:, 0], scale, gate_bias)
