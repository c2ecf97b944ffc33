"""Extended Kalman filter training of the recurrent regressor (global EKF and decoupled DEKF).

State-space form (PAPER-NOTES 1.4), with theta as the filter's state:

    theta_t = theta_{t-1} + eta_t,          eta_t ~ N(0, Q_t),  Q_t = q_t I
    d_t     = d_hat(x_t; theta_t) + eps_t,  eps_t ~ N(0, R_t)

One step, written as in filterpy / Haykin ch. 2 (H_t is a row, so S_t is a scalar):

    H_t = d d_hat_t / d theta                    (autograd through the BPTT window)
    S_t = H_t P H_t^T + R_t                      predictive variance of d_t
    K_t = P H_t^T / S_t                          Kalman gain
    theta += K_t (d_t - d_hat_t)
    P     = P - K_t S_t K_t^T + Q_t              (symmetric: an outer product of P H_t^T)
          or the Joseph form (I - K H) P (I - K H)^T + K R K^T + Q_t, symmetrised

R_t and q_t anneal linearly from their initial to their final values over a number of
ticks of each series (Vural, Ergut & Kozat's schedule). The EKF is invariant to scaling
(P, Q, R) together, so their absolute level only sets the scale of S_t; the ModelBank's
calibration rescales the published variance to the observed errors.

The decoupled EKF (Puskorius & Feldkamp 1994) keeps one covariance block per cell neuron
(the G*q weights feeding that neuron across all gates, gathered by NetSpec.blocks_of) plus one for the
head, and ignores the cross-covariances: cost O(m (Gq)^2) instead of O(n_theta^2), linear in
the number of blocks. A block holds neuron j's weights from every input to every gate.
S_t still sums every block's H P H^T, so all blocks share one gain
denominator, as in the coupled filter.

Not implemented here: the paper's augmentation of the state with c_t, y_t; gradients
through the window stand in for the state's cross-covariances.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.cells import NetSpec
from models.learners.base import Count, NonNegative, Positive, State, cold_theta, linear_anneal, rows_finite
from models.learners.window import has_closed_form, lstm_bptt, window_advance, window_init, window_jacobian


@dataclass(frozen=True)
class EKFConfig:
    p0: Positive = 100.0  # initial covariance P_0 = p0 I (cold start)
    p0_warm: Positive = 0.1  # initial covariance around warm-started weights: trust what history taught
    r_init: Positive = 10.0
    r_last: Positive = 3.0
    r_steps: Count = 2000
    q_init: NonNegative = 1e-4
    q_last: NonNegative = 1e-6
    q_steps: Count = 2000
    window: Count = 10
    joseph: bool = False
    init_scale: NonNegative = 0.1
    gate_bias: float = 0.5


def _eye(B: int, n: int, scale: float, dtype: torch.dtype, lead: tuple[int, ...] = ()) -> torch.Tensor:
    return (scale * torch.eye(n, dtype=dtype)).expand(B, *lead, n, n).clone()


def kalman_update(
    theta: torch.Tensor, P: torch.Tensor, H: torch.Tensor, e: torch.Tensor, R: torch.Tensor, q: torch.Tensor,
    joseph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One measurement update with a scalar observation, then the random-walk time update.

    theta [B, n], P [B, n, n], H [B, n], e = d - d_hat [B], R [B], q [B] -> (theta, P + q I, S [B]).
    """
    PH = torch.bmm(P, H.unsqueeze(2)).squeeze(2)  # [B, n]  P H^T
    S = (H * PH).sum(dim=1) + R  # [B]
    K = PH / S.unsqueeze(1)  # [B, n]
    theta = theta + K * e.unsqueeze(1)
    if joseph:
        KPH = K.unsqueeze(2) * PH.unsqueeze(1)  # [B, n, n]  K (P H^T)^T
        P = P - KPH - KPH.transpose(1, 2) + S.view(-1, 1, 1) * K.unsqueeze(2) * K.unsqueeze(1)
        P = 0.5 * (P + P.transpose(1, 2))
    else:
        a = PH / S.sqrt().unsqueeze(1)  # [B, n]  so that a a^T = K S K^T
        P = P.baddbmm_(a.unsqueeze(2), a.unsqueeze(1), alpha=-1.0)  # in place: P is the largest tensor
    P.diagonal(dim1=1, dim2=2).add_(q.unsqueeze(1))
    return theta, P, S


class _KalmanBase:
    """The parts EKF and DEKF share: state layout, schedules, the window."""

    name = "ekf"

    def __init__(self, spec: NetSpec, config: EKFConfig = EKFConfig(), dtype: torch.dtype = torch.float32):
        self.spec, self.config, self.dtype = spec, config, dtype

    def _base_state(self, seeds: torch.Tensor, theta0: torch.Tensor | None) -> tuple[State, float]:
        B, c = seeds.shape[0], self.config
        if theta0 is None:
            theta, p0 = cold_theta(self.spec, seeds, c.init_scale, c.gate_bias, self.dtype), c.p0
        else:
            theta, p0 = theta0.to(self.dtype).expand(B, -1).clone(), c.p0_warm
        state: State = {
            "theta": theta,
            "t": torch.zeros(B, dtype=torch.int64),
            "seed": seeds.clone(),
            **window_init(self.spec, c.window, B, self.dtype),
        }
        return state, p0

    def _noise(self, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        R = linear_anneal(state["t"], c.r_init, c.r_last, c.r_steps).to(self.dtype)  # [B]
        q = linear_anneal(state["t"], c.q_init, c.q_last, c.q_steps).to(self.dtype)  # [B]
        return R, q

    def _jacobian(self, state: State, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(d_hat [B], H [B, n_theta], state after the window's first input): closed form where it exists."""
        if has_closed_form(self.spec):
            with torch.no_grad():
                d_hat, U, Delta, phi, h_first = lstm_bptt(self.spec, state["theta"], state["h0"], state["xbuf"], x)
                Hc = torch.bmm(U.transpose(1, 2), Delta).reshape(x.shape[0], -1)  # [B, n_cell]
                return d_hat, torch.cat([Hc, phi], dim=1), h_first
        return window_jacobian(self.spec, state["theta"], state["h0"], state["xbuf"], x)

    def predict(self, state: State, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d_hat, H, _ = self._jacobian(state, x)
        R, _ = self._noise(state)
        return d_hat, self._hph(state, H) + R

    def update(self, state: State, x: torch.Tensor, d: torch.Tensor) -> State:
        return self.step(state, x, d)[2]  # type: ignore[attr-defined]

    def _hph(self, state: State, H: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EKFLearner(_KalmanBase):
    """Global EKF: one dense P [n_theta, n_theta] per series. For small nets and few series."""

    name = "ekf"

    def init_state(self, seeds: torch.Tensor, theta0: torch.Tensor | None = None) -> State:
        state, p0 = self._base_state(seeds, theta0)
        state["P"] = _eye(seeds.shape[0], self.spec.n_theta, p0, self.dtype)  # [B, n, n]
        return state

    def _hph(self, state: State, H: torch.Tensor) -> torch.Tensor:
        PH = torch.bmm(state["P"], H.unsqueeze(2)).squeeze(2)  # [B, n]
        return (H * PH).sum(dim=1)

    def step(self, state: State, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, State]:
        d_hat, H, h_first = self._jacobian(state, x)
        R, q = self._noise(state)
        with torch.no_grad():
            state["theta"], state["P"], S = kalman_update(state["theta"], state["P"], H, d - d_hat, R, q,
                                                          self.config.joseph)
            state["t"] = state["t"] + 1
            window_advance(state, x, h_first)
        return d_hat, S, state

    def healthy(self, state: State) -> torch.Tensor:
        return rows_finite(state["theta"], state["h0"], state["P"].diagonal(dim1=1, dim2=2))


class DEKFLearner(_KalmanBase):
    """Decoupled EKF: P as m blocks [Gq, Gq] (one per cell neuron) plus one head block."""

    name = "dekf"

    def init_state(self, seeds: torch.Tensor, theta0: torch.Tensor | None = None) -> State:
        state, p0 = self._base_state(seeds, theta0)
        B, s = seeds.shape[0], self.spec
        state["Pc"] = _eye(B, s.block_size, p0, self.dtype, (s.hidden,))  # [B, m, Gq, Gq]
        state["Ph"] = _eye(B, s.n_head, p0, self.dtype)  # [B, nh, nh]
        return state

    def _split(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.spec
        return s.blocks_of(H[:, : s.n_cell]), H[:, s.n_cell :]  # [B, m, Gq], [B, nh]

    def _products(self, state: State, H: torch.Tensor):
        Hc, Hh = self._split(H)
        PHc = torch.matmul(state["Pc"], Hc.unsqueeze(3)).squeeze(3)  # [B, m, Gq]
        PHh = torch.bmm(state["Ph"], Hh.unsqueeze(2)).squeeze(2)  # [B, nh]
        hph = (Hc * PHc).sum(dim=(1, 2)) + (Hh * PHh).sum(dim=1)  # [B]
        return PHc, PHh, hph

    def _hph(self, state: State, H: torch.Tensor) -> torch.Tensor:
        return self._products(state, H)[2]

    def step(self, state: State, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, State]:
        s = self.spec
        d_hat, H, h_first = self._jacobian(state, x)
        R, q = self._noise(state)
        with torch.no_grad():
            PHc, PHh, hph = self._products(state, H)
            S = hph + R  # [B]
            e = d - d_hat  # [B]
            B = S.shape[0]
            gain = (e / S).unsqueeze(1)  # [B, 1]
            dtheta = torch.cat([s.cell_of(PHc), PHh], dim=1) * gain  # [B, n]
            state["theta"] = state["theta"] + dtheta
            root = S.sqrt()
            ac = (PHc / root.view(B, 1, 1)).reshape(B * s.hidden, s.block_size, 1)  # [B*m, Gq, 1]
            Pc = state["Pc"].view(B * s.hidden, s.block_size, s.block_size)
            Pc = Pc.baddbmm_(ac, ac.transpose(1, 2), alpha=-1.0).view(B, s.hidden, s.block_size, s.block_size)
            Pc.diagonal(dim1=2, dim2=3).add_(q.view(B, 1, 1))
            ah = (PHh / root.unsqueeze(1)).unsqueeze(2)  # [B, nh, 1]
            Ph = state["Ph"].baddbmm_(ah, ah.transpose(1, 2), alpha=-1.0)
            Ph.diagonal(dim1=1, dim2=2).add_(q.unsqueeze(1))
            state["Pc"], state["Ph"] = Pc, Ph
            state["t"] = state["t"] + 1
            window_advance(state, x, h_first)
        return d_hat, S, state

    def healthy(self, state: State) -> torch.Tensor:
        return rows_finite(state["theta"], state["h0"], state["Ph"].diagonal(dim1=1, dim2=2))
