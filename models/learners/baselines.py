"""Baselines every learner is judged against, behind the same Learner protocol.

* mean:        d_hat = running mean of past targets
* persistence: d_hat = the previous target ("tomorrow = today"; for a series whose target is
               its next value, this is the current value)
* linear:      recursive least squares on [x; 1] (exponential forgetting lam, P_0 = delta I)

Their variance is a running mean of squared errors (RLS: scaled by 1 + phi^T P phi).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models import kalman
from models.cells import NetSpec
from models.learners.base import Positive, Share, State, rows_finite

_VAR_DECAY = 0.02


def _running_var(state: State, e: torch.Tensor) -> None:
    state["r2"] = (1 - _VAR_DECAY) * state["r2"] + _VAR_DECAY * e * e


class MeanLearner:
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

    def healthy(self, state: State) -> torch.Tensor:
        return rows_finite(state["mean"], state["r2"])


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

    def healthy(self, state: State) -> torch.Tensor:
        return rows_finite(state["last"], state["r2"])


@dataclass(frozen=True)
class RLSConfig:
    delta: Positive = 100.0  # P_0 = delta I
    lam: Share = 1.0  # forgetting factor


class RLSLearner:
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

    def predict(self, state: State, x: torch.Tensor, memo: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self._phi(x)  # [B, p+1]
        Pphi, S = self._innovation(state, phi)  # [B, p+1], [B]
        if memo is not None:  # the next step of this state at this x: the same phi, P phi and S
            memo.update(phi=phi, Pphi=Pphi, S=S)
        return (state["beta"] * phi).sum(1), state["r2"] * (1 + S - self.config.lam)

    def step(self, state: State, x: torch.Tensor, d: torch.Tensor, memo: dict | None = None):
        lam = self.config.lam
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

    def healthy(self, state: State) -> torch.Tensor:
        return rows_finite(state["beta"], state["r2"])
