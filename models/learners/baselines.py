"""Baselines every learner is judged against, behind the same Learner protocol.

* mean:        d_hat = running mean of past targets
* persistence: d_hat = the previous target ("tomorrow = today"; for a series whose target is
               its next value, this is the current value)
* linear:      recursive least squares on [x; 1] (exponential forgetting lam, P_0 = delta I)

Their variance is a running mean of squared errors (RLS: scaled by 1 + phi^T P phi).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models import kalman
from models.cells import NetSpec
from models.jit import Kernel, array, memory
from models.learners.base import NP_FLOAT, FiniteTensors, Positive, Share, State

_VAR_DECAY = 0.02


def _running_var(state: State, e: torch.Tensor) -> None:
    state["r2"] = (1 - _VAR_DECAY) * state["r2"] + _VAR_DECAY * e * e


class MeanLearner(FiniteTensors):
    name = "mean"
    autograd = False  # closed-form arithmetic only (`models.learners.base`)

    def __init__(self, spec: NetSpec, dtype: torch.dtype = torch.float32):
        self.spec, self.dtype = spec, dtype

    def init_state(self, seeds: torch.Tensor, theta0: torch.Tensor | None = None) -> State:
        B = seeds.shape[0]
        z = torch.zeros(B, dtype=self.dtype)
        return {"mean": z, "r2": torch.ones(B, dtype=self.dtype), "n": z.clone(), "seed": seeds.clone()}

    def predict(self, state: State, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return state["mean"].clone(), state["r2"].clone()

    def step(self, state: State, x: torch.Tensor, d: torch.Tensor):
        mean, var = self.predict(state, x)
        state["n"] = state["n"] + 1
        state["mean"] = state["mean"] + (d - state["mean"]) / state["n"]
        _running_var(state, d - mean)
        return mean, var, state

    def update(self, state: State, x: torch.Tensor, d: torch.Tensor) -> State:
        return self.step(state, x, d)[2]

    def health_tensors(self, state: State) -> tuple[torch.Tensor, ...]:
        return state["mean"], state["r2"]


class PersistenceLearner(MeanLearner):
    name = "persistence"

    def init_state(self, seeds: torch.Tensor, theta0: torch.Tensor | None = None) -> State:
        B = seeds.shape[0]
        return {"last": torch.zeros(B, dtype=self.dtype), "r2": torch.ones(B, dtype=self.dtype), "seed": seeds.clone()}

    def predict(self, state: State, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return state["last"].clone(), state["r2"].clone()

    def step(self, state: State, x: torch.Tensor, d: torch.Tensor):
        mean, var = self.predict(state, x)
        state["last"] = d.clone()
        _running_var(state, d - mean)
        return mean, var, state

    def health_tensors(self, state: State) -> tuple[torch.Tensor, ...]:
        return state["last"], state["r2"]


@dataclass(frozen=True)
class RLSConfig:
    delta: Positive = 100.0  # P_0 = delta I
    lam: Share = 1.0  # forgetting factor


class RLSLearner(FiniteTensors):
    name = "linear"
    autograd = False
    memoises = True  # predict's phi, P phi and S are the next step's (`models.learners.base`)

    def __init__(self, spec: NetSpec, config: RLSConfig = RLSConfig(), dtype: torch.dtype = torch.float32):
        self.spec, self.config, self.dtype = spec, config, dtype

    def init_state(self, seeds: torch.Tensor, theta0: torch.Tensor | None = None) -> State:
        B, k = seeds.shape[0], self.spec.n_in + 1
        return {
            "beta": torch.zeros(B, k, dtype=self.dtype),  # [B, p+1]
            "P": (self.config.delta * torch.eye(k, dtype=self.dtype)).expand(B, k, k).clone(),  # [B, p+1, p+1]
            "r2": torch.ones(B, dtype=self.dtype),
            "seed": seeds.clone(),
        }

    def _phi(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)  # [B, p+1]

    # RLS is the Kalman filter of a constant beta observed through phi with R = lam, whose P is divided
    # by lam after each update (exponential forgetting); with lam = 1, of the exact least-squares fit.
    def _innovation(self, state: State, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        R = torch.full((phi.shape[0],), self.config.lam, dtype=phi.dtype)  # [B]
        (Pphi,), S = kalman.innovation([(state["P"], phi)], R)  # [B, p+1], [B] = lam + phi^T P phi
        return Pphi, S

    def _compiled(self, state: State, x: torch.Tensor) -> bool:
        """Whether this wave takes the loops (`RLS_MAX_ROWS`): few rows, the learner's float width, its state laid
        out flat (the step writes it in place)."""
        return x.shape[0] <= RLS_MAX_ROWS and x.dtype == self.dtype and all(
            state[k].dtype == self.dtype and state[k].is_contiguous() for k in ("beta", "P", "r2")) \
            and RLS_PREDICT.usable(self.dtype) and RLS_STEP.usable(self.dtype)

    def _predict_compiled(self, state: State, x: torch.Tensor) -> tuple[np.ndarray, ...]:
        """(phi [B, k], P phi [B, k], S [B], mean [B], var [B]) by one compiled call."""
        B, k, dt = x.shape[0], self.spec.n_in + 1, NP_FLOAT[self.dtype]
        phi, Pphi, S, mean, var = np.empty((B, k), dt), np.empty((B, k), dt), np.empty(B, dt), np.empty(B, dt), \
            np.empty(B, dt)
        RLS_PREDICT.compiled()(array(state["beta"]), array(state["P"]), array(state["r2"]), array(x), self.config.lam,
                               phi, Pphi, S, mean, var)
        return phi, Pphi, S, mean, var

    def predict(self, state: State, x: torch.Tensor, memo: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self._compiled(state, x):
            phi_a, Pphi_a, S_a, mean_a, var_a = self._predict_compiled(state, x)
            if memo is not None:
                memo.update(phi=torch.from_numpy(phi_a), Pphi=torch.from_numpy(Pphi_a), S=torch.from_numpy(S_a))
            return torch.from_numpy(mean_a), torch.from_numpy(var_a)
        phi = self._phi(x)  # [B, p+1]
        Pphi, S = self._innovation(state, phi)  # [B, p+1], [B]
        if memo is not None:  # the next step of this state at this x: the same phi, P phi and S
            memo.update(phi=phi, Pphi=Pphi, S=S)
        return (state["beta"] * phi).sum(1), state["r2"] * (1 + S - self.config.lam)

    def step(self, state: State, x: torch.Tensor, d: torch.Tensor, memo: dict | None = None):
        lam = self.config.lam
        if self._compiled(state, x) and d.dtype == self.dtype:  # in place: beta, P and r2 by one compiled call
            if memo:
                phi_a, Pphi_a, S_a = (array(memo[k]) for k in ("phi", "Pphi", "S"))
            else:
                phi_a, Pphi_a, S_a, _, _ = self._predict_compiled(state, x)
            B, dt = x.shape[0], NP_FLOAT[self.dtype]
            mean_a, var_a = np.empty(B, dt), np.empty(B, dt)
            RLS_STEP.compiled()(memory(state["beta"]), memory(state["P"]), memory(state["r2"]), phi_a, Pphi_a, S_a,
                                array(d), lam, _VAR_DECAY, mean_a, var_a)
            return torch.from_numpy(mean_a), torch.from_numpy(var_a), state
        if memo:
            phi, Pphi, S = memo["phi"], memo["Pphi"], memo["S"]
        else:
            phi = self._phi(x)  # [B, p+1]
            Pphi, S = self._innovation(state, phi)  # [B, p+1], [B]
        mean, var = (state["beta"] * phi).sum(1), state["r2"] * (1 + S - lam)
        e = d - mean
        (dbeta,) = kalman.correct([state["P"]], [Pphi], e, S)  # P updated in place
        state["beta"] = state["beta"] + dbeta
        if lam != 1.0:
            state["P"].div_(lam)
        _running_var(state, e)
        return mean, var, state

    def update(self, state: State, x: torch.Tensor, d: torch.Tensor) -> State:
        return self.step(state, x, d)[2]

    def health_tensors(self, state: State) -> tuple[torch.Tensor, ...]:
        return state["beta"], state["r2"]


# A wave of at most this many keys takes RLS's compiled loops: its filter is p + 1 numbers, so a wave's cost is the
# dozen torch calls around the arithmetic, not the arithmetic (`benchmarks/speed.py`'s compiled-loops table).
RLS_MAX_ROWS = 64


def _rls_predict_rows(beta, P, r2, x, lam, phi, Pphi, S, mean, var):  # pragma: no cover - compiled
    """`RLSLearner.predict`, one key at a time: phi = [x, 1], P phi (as (phi^T P)^T, P symmetric), S = lam + phi^T P
    phi, mean = beta . phi, var = r2 (1 + S - lam). beta [B, k], P [B, k, k], r2 [B], x [B, k - 1]; writes the rest."""
    B, p = x.shape
    k = p + 1
    for b in range(B):
        for j in range(p):
            phi[b, j] = x[b, j]
        phi[b, p] = 1.0
        s = 0.0
        m = 0.0
        for i in range(k):
            acc = 0.0
            for j in range(k):
                acc += phi[b, j] * P[b, j, i]
            Pphi[b, i] = acc
            s += phi[b, i] * acc
            m += beta[b, i] * phi[b, i]
        S[b] = lam + s
        mean[b] = m
        var[b] = r2[b] * (1 + S[b] - lam)


def _rls_step_rows(beta, P, r2, phi, Pphi, S, d, lam, decay, mean, var):  # pragma: no cover - compiled
    """`RLSLearner.step` after its innovation, one key at a time, in place: the prediction (mean, var) before the
    label, then beta += P phi e / S, P -= (P phi)(P phi)^T / S (then / lam), r2 moves toward e^2."""
    B, k = beta.shape
    for b in range(B):
        m = 0.0
        for i in range(k):
            m += beta[b, i] * phi[b, i]
        mean[b] = m
        var[b] = r2[b] * (1 + S[b] - lam)
        e = d[b] - m
        g = e / S[b]
        for i in range(k):
            beta[b, i] += Pphi[b, i] * g
        for i in range(k):
            ai = Pphi[b, i] / S[b]
            for j in range(k):
                P[b, i, j] = (P[b, i, j] - ai * Pphi[b, j]) / lam
        r2[b] = (1 - decay) * r2[b] + decay * e * e


def _rls_warm_up(dtype: torch.dtype) -> None:
    """Run both loops once for this float width, on one key of one input (compiling or loading them)."""
    learner = RLSLearner(NetSpec(n_in=1), dtype=dtype)
    state, x = learner.init_state(torch.zeros(1, dtype=torch.int64)), torch.ones(1, 1, dtype=dtype)
    dt = NP_FLOAT[dtype]
    out = [np.empty((1, 2), dt), np.empty((1, 2), dt)] + [np.empty(1, dt) for _ in range(3)]
    RLS_PREDICT.compiled()(array(state["beta"]), array(state["P"]), array(state["r2"]), array(x), 1.0, *out)
    RLS_STEP.compiled()(memory(state["beta"]), memory(state["P"]), memory(state["r2"]), out[0], out[1], out[2],
                        np.ones(1, dt), 1.0, _VAR_DECAY, np.empty(1, dt), np.empty(1, dt))


RLS_PREDICT = Kernel(_rls_predict_rows, _rls_warm_up, "linear expert (RLS)")
RLS_STEP = Kernel(_rls_step_rows, _rls_warm_up, "linear expert (RLS)")
