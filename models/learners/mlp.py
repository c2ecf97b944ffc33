"""A feed-forward network of the current regressor, trained by the global EKF (Singhal & Wu 1989).

No recurrence: where a stream's target is a function of the regressor now (a plant's sensors read
together, a key's last few values as a nonlinear autoregression), a net that carries no state
between ticks learns it from fewer ticks than a recurrent one of the same size, and its full
covariance is small enough to keep per key. One hidden layer of m tanh units:

    h_t     = tanh(W^T x_t + b)                        x_t [p], W [p, m], b [m]
    d_hat_t = v^T h_t + a^T x_t + c                    v [m], a [p] (`skip`; without it a = 0), c

theta = [W (input-major, W[k, j] at k m + j) ; b ; v ; (a) ; c], n = p m + 2 m + 1 (+ p). Its
Jacobian in closed form (g = v * (1 - h^2), the gradient at the hidden layer's input):

    d d_hat / d W[k, j] = x_k g_j,   d / d b = g,   d / d v = h,   d / d a = x,   d / d c = 1

The filter is the EKF's (`models.learners.ekf`: one dense P per key, `models.kalman.update`, R_t
and q_t annealed on the same schedule). A wave of few rows computes d_hat and H in one compiled
loop (`models.jit`; the torch pass is about a dozen calls, each the wave's cost for a few keys).

Measured alone (RESULTS "The feed-forward expert"): below every recurrent learner on the three
regression streams, with a covariance of 169^2 numbers at 8 inputs (the full EKF's LSTM at m=16 has
1,625^2, the ensemble's at m=6 367^2). It is the default ensemble's sixth expert.

A warm start's theta is a recurrent net's: this learner takes none, and starts cold (as the baselines).

    >>> import torch
    >>> from models.cells import NetSpec
    >>> L = MLPLearner(NetSpec(n_in=2, hidden=4))
    >>> L.n_learned  # W 2x4, b 4, v 4, a 2, c 1
    19
    >>> state = L.init_state(torch.arange(3))
    >>> x = torch.tensor([[0.5, -1.0]]).repeat(3, 1)
    >>> for _ in range(200):
    ...     _, _, state = L.step(state, x, torch.full((3,), 0.7))
    >>> mean, var = L.predict(state, x)
    >>> bool(((mean - 0.7).abs() < 0.01).all())
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from models import kalman, rng
from models.cells import NetSpec
from models.jit import Kernel, array
from models.learners import ekf_kernel
from models.learners.base import NP_FLOAT, FiniteTensors, NonNegative, Positive, State
from models.learners.ekf import KalmanNoise, kalman_noise


@dataclass(frozen=True)
class MLPConfig(KalmanNoise):
    # The EKF's noise schedule and cold-start P_0. Measured alone (RESULTS "The feed-forward expert", kin8nm /
    # puma8nh): P_0 100 0.283 / 0.418, P_0 10 0.365 / 0.467, P_0 1,000 0.296 / 0.444; R 10 -> 3 0.294 / 0.442,
    # R 300 -> 100 0.275 / 0.437.
    p0: Positive = 100.0
    init_scale: NonNegative = 0.5  # W ~ N(0, init_scale^2 / p), v ~ N(0, init_scale^2 / m)
    # The direct path a^T x, as the model's skip head. In the default ensemble, beside its RLS expert, still
    # ahead of the plain net on all four streams (kin8nm 0.254 against 0.260); alone, ahead on two of them.
    skip: bool = True


# A wave takes the compiled forward pass while it has at most this many rows (keys); wider, torch's vectorised
# tanh and products win (benchmarks/speed.py).
MAX_ROWS = 64


def _forward_rows(theta, x, m, skip, d_hat, H):  # pragma: no cover - compiled
    """`MLPLearner._forward` one row at a time: theta [B, n] laid out [W; b; v; (a); c], x [B, p]; writes d_hat [B]
    and H [B, n] = [x (x) g; g; h; (x); 1], g = v (1 - h^2)."""
    B, p = x.shape
    n = theta.shape[1]
    for b in range(B):
        out = theta[b, n - 1]  # c
        for j in range(m):
            a = theta[b, p * m + j]  # b_j
            for k in range(p):
                a += x[b, k] * theta[b, k * m + j]
            h = math.tanh(a)
            v = theta[b, p * m + m + j]
            out += v * h
            g = v * (1.0 - h * h)
            for k in range(p):
                H[b, k * m + j] = x[b, k] * g
            H[b, p * m + j] = g
            H[b, p * m + m + j] = h
        if skip:
            for k in range(p):
                out += theta[b, p * m + 2 * m + k] * x[b, k]
                H[b, p * m + 2 * m + k] = x[b, k]
        H[b, n - 1] = 1.0
        d_hat[b] = out


def _warm_up(dtype: torch.dtype) -> None:
    """Run the loop once for this float width, on one row of a one-unit net (compiling or loading it)."""
    dt = NP_FLOAT[dtype]
    FORWARD.compiled()(np.zeros((1, 4), dt), np.zeros((1, 1), dt), 1, False, np.zeros(1, dt), np.zeros((1, 4), dt))


FORWARD = Kernel(_forward_rows, _warm_up, "feed-forward pass")


class MLPLearner(FiniteTensors):
    name = "mlp"
    autograd = False  # closed-form Jacobian (`models.learners.base.uses_autograd`)
    memoises = True  # predict's Jacobian and innovation are the next step's (`models.learners.base`)

    def __init__(self, spec: NetSpec, config: MLPConfig = MLPConfig(), dtype: torch.dtype = torch.float32):
        self.spec, self.config, self.dtype = spec, config, dtype
        p, m = spec.n_in, spec.hidden
        self._sizes = (p * m, m, m, p if config.skip else 0, 1)  # W, b, v, a, c

    @property
    def n_learned(self) -> int:
        """The width of theta and of `jacobian` (`models.learners.base.LearnsFromHorizons`)."""
        return sum(self._sizes)

    def init_state(self, seeds: torch.Tensor, theta0: torch.Tensor | None = None) -> State:
        B, (p, m), n = seeds.shape[0], (self.spec.n_in, self.spec.hidden), self.n_learned
        z = rng.normal_rows(seeds, torch.zeros_like(seeds), rng.STREAM_INIT, 1, n, self.dtype)[:, 0]  # [B, n]
        scale = torch.zeros(n, dtype=self.dtype)  # [n]  the hidden layer's weights drawn, the rest at zero
        scale[: p * m] = self.config.init_scale / p**0.5
        scale[p * m + m : p * m + 2 * m] = self.config.init_scale / m**0.5
        return {
            "theta": z * scale,  # [B, n]
            "P": (self.config.p0 * torch.eye(n, dtype=self.dtype)).expand(B, n, n).clone(),  # [B, n, n]
            "t": torch.zeros(B, dtype=torch.int64),
            "seed": seeds.clone(),
        }

    def _forward(self, theta: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d_hat [B], H = d d_hat / d theta [B, n]) at x [B, p]."""
        B, p, m = x.shape[0], self.spec.n_in, self.spec.hidden
        if B <= MAX_ROWS and theta.dtype == x.dtype == self.dtype and not (theta.requires_grad or x.requires_grad) \
                and FORWARD.usable(self.dtype):
            dt = NP_FLOAT[self.dtype]
            d_hat, H = np.empty(B, dt), np.empty(tuple(theta.shape), dt)
            FORWARD.compiled()(array(theta), array(x), m, self.config.skip, d_hat, H)
            return torch.from_numpy(d_hat), torch.from_numpy(H)
        W, b, v, a, c = theta.split(self._sizes, dim=1)  # [B, p m], [B, m], [B, m], [B, p or 0], [B, 1]
        h = torch.tanh(torch.bmm(x.unsqueeze(1), W.view(B, p, m)).squeeze(1) + b)  # [B, m]
        d_hat = (v * h).sum(1) + c[:, 0]  # [B]
        g = v * (1 - h * h)  # [B, m]  d d_hat / d (W^T x + b)
        parts = [(x.unsqueeze(2) * g.unsqueeze(1)).view(B, p * m), g, h]  # [B, p m], [B, m], [B, m]
        if self.config.skip:
            d_hat = d_hat + (a * x).sum(1)
            parts.append(x)  # [B, p]
        parts.append(torch.ones_like(c))  # [B, 1]
        return d_hat, torch.cat(parts, dim=1)  # [B], [B, n]

    def predict(self, state: State, x: torch.Tensor, memo: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        d_hat, H = self._forward(state["theta"], x)
        R, q = kalman_noise(self.config, state["t"], self.dtype)
        PH, S = kalman.innovation([(state["P"], H)], R)  # [[B, n]], [B]
        if memo is not None:  # the next step of this state at this x: the same H, noise, P H^T and S
            memo["jacobian"], memo["noise"], memo["innovation"] = (d_hat, H), (R, q), (PH, S)
        return d_hat, S

    def step(self, state: State, x: torch.Tensor, d: torch.Tensor, memo: dict | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, State]:
        d_hat, H = memo["jacobian"] if memo else self._forward(state["theta"], x)
        R, q = memo["noise"] if memo else kalman_noise(self.config, state["t"], self.dtype)
        PH, S = memo["innovation"] if memo else kalman.innovation([(state["P"], H)], R)
        if ekf_kernel.serves([state["theta"], state["t"], state["P"]], self.dtype, (d,)):  # few rows: one call
            ekf_kernel.step((state["P"].unsqueeze(1), PH[0].unsqueeze(1)), None, self.n_learned, d - d_hat, S, q,
                            state["theta"], state["t"])
            return d_hat, S, state
        (dtheta,) = kalman.correct([state["P"]], PH, d - d_hat, S)  # P in place
        state["theta"] = state["theta"] + dtheta
        kalman.add_diagonal(state["P"], q)
        state["t"] = state["t"] + 1
        return d_hat, S, state

    def update(self, state: State, x: torch.Tensor, d: torch.Tensor) -> State:
        return self.step(state, x, d)[2]

    def health_tensors(self, state: State) -> tuple[torch.Tensor, ...]:
        return state["theta"], state["P"].diagonal(dim1=1, dim2=2)

    # --------------------------------------------- the horizons' errors (`base.LearnsFromHorizons`)
    def jacobian(self, state: State, x: torch.Tensor, memo: dict | None = None) -> torch.Tensor:
        return (memo["jacobian"] if memo else self._forward(state["theta"], x))[1]

    def learned_weights(self, state: State) -> torch.Tensor:
        return state["theta"]

    def learn_from(self, state: State, H: torch.Tensor, e: torch.Tensor, r_scale: torch.Tensor) -> None:
        """One more measurement of theta, in place (as the EKF's `learn_from`)."""
        R, _ = kalman_noise(self.config, state["t"], self.dtype)
        (dtheta,), _ = kalman.update([(state["P"], H)], e, R * r_scale)
        state["theta"] = state["theta"] + dtheta
