"""Particle-filter training (Ergen & Kozat 2018, the paper's main method), made to learn.

Target: the filtering density p(a_t | d_1:t) of a_t = [y_t; c_t; theta_t], estimate = its
conditional mean (the MSE-optimal estimate). Particles of all series live in one tensor
[B, N, ...]; nothing loops over series or particles.

Per tick, for particle i of a series (PAPER-NOTES 4):

    propagate   h^i_t = cell(theta^i, h^i_{t-1}, x_t)                       [+ N(0, s_h^2) noise]
    predict     d_hat^i = r^i . phi^i,  phi^i = [y^i_t; 1; alpha^i_t x_t]
                d_hat_t = sum_i w^i_{t-1} d_hat^i                           (before the label)
    weight      log w^i += log N(d_t; d_hat^i, phi^T Sigma^i phi + R)        (log domain)
    resample    N_eff = 1 / sum_i (w^i)^2 < threshold * N  ->  systematic resampling
    move        theta^i += s_theta * eps                                    (random walk)

Choices beyond the plain bootstrap filter, each because the plain one barely learns with
~1,600 weights and tens of particles (NMSE 0.89 on kin8nm where the EKF reaches 0.28):

1. Rao-Blackwellised read-out (de Freitas et al. 2000; Doucet et al. 2000, "RBPF"): given a
   particle's y_t, the estimate is linear in r = [w; b0; v], so each particle carries the
   exact Gaussian posterior N(mu^i, Sigma^i) of r, updated by a scalar Kalman filter, and its
   weight uses the *marginal* likelihood N(d; mu^T phi, phi^T Sigma phi + R). Particles then
   only have to explore the nonlinear part (cell and gate weights, c_t, y_t).
2. Particles that carry their own EKF (`move="ekf"`, the default; a Gaussian-sum filter in the
   manner of the particle-EKF / EKF-proposal filters of de Freitas et al. 2000 and van der Merwe
   et al. 2000): each particle holds a diagonal covariance P^i over its cell weights and moves
   them by its own EKF step, theta^i += P^i H^i e^i / S^i with S^i = H^i P^i H^i^T + phi^T Sigma^i
   phi + R, so its weight is the likelihood under S^i (its weights' uncertainty included). A
   diagonal P costs as much memory as the weights; a full one per particle would not fit.
   `move="gradient"` is the cheaper HySIR move (de Freitas et al. 2000): a fixed step `grad_step`
   along each particle's own gradient; `grad_step=0` turns moves off (the bootstrap proposal).
3. Kernel shrinkage (`transition="liu_west"`, Liu & West 2001): the random walk inflates the
   parameter spread every tick; the kernel theta <- a theta + (1 - a) theta_bar +
   sqrt(1 - a^2) sd eps keeps the particle cloud's mean and variance. Off by default.
4. Noise from the counter-based pool of `models.rng` (the random walk needs B*N*n normals a
   tick; drawing them fresh costs more than the whole rest of the step).

The mean and variance published are the mixture's: mean = sum w d_hat^i,
var = sum w (phi^T Sigma phi + R + d_hat_i^2) - mean^2 (weighted particle spread + R).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from annotated_types import Ge

from models import kalman, rng
from models.cells import (
    NetSpec,
    cell_step,
    init_theta,
    lstm_activation,
    lstm_preactivation,
    split_state,
    unpack_parts,
)
from models.heads import readout_features
from models.jit import Kernel, array, memory
from models.learners.base import NP_FLOAT, FiniteTensors, NonNegative, Positive, Share, State
from models.learners.window import has_closed_form, lstm_bptt

# The moves and the random walk touch every particle's every cell weight (~100M numbers at 1,000 keys) a
# few times each: done a block of keys at a time, each block's temporaries stay in a core's L2 cache
# instead of streaming through memory once per operation (measured in RESULTS, speed.py).
_BLOCK_BYTES = 1 << 21


@dataclass(frozen=True)
class PFConfig:
    n_particles: Annotated[int, Ge(2)] = 64
    threshold: Share = 0.5  # resample when N_eff < threshold * N
    # measurement noise variance R (normalised scale). It sets three things at once: how sharply the
    # likelihood weighs the particles, the read-out filter's gain and, with move_p0, each particle's EKF
    # gain P0 / R. Measured with the defaults (RESULTS "How the defaults were chosen", 2 seeds): R and
    # P0 0.3 together (the gain kept at 1) against 0.1 and 0.1, with the read-out's walk 3e-6 against
    # 1e-5: elevators 0.202 against 0.211, kin8nm 0.337 against 0.362, puma8nh 0.518 against 0.549 (and
    # ETTh1 0.245 against 0.250, 1 seed). R 0.3 with P0 0.1 (gain 1/3) is worse on kin8nm (0.374): the
    # particles then learn too slowly.
    r: Positive = 0.3
    theta_noise: NonNegative = 2e-3  # random-walk std on the nonlinear weights, per tick
    transition: Literal["random_walk", "liu_west"] = "random_walk"
    shrink: Share = 0.98  # Liu-West a
    state_noise: NonNegative = 0.0  # std of noise on c_t, y_t
    grad_step: NonNegative = 0.1  # gradient-informed move (0 = plain bootstrap proposal)
    # "gradient": the fixed step grad_step (HySIR); "ekf": each particle carries a diagonal Gaussian
    # over its cell weights and moves by its own EKF step (a Gaussian-sum / particle-EKF filter)
    # measured with the defaults (RESULTS "How the defaults were chosen"): the particle-EKF move beats the
    # fixed gradient step on every stream (kin8nm 0.362 against 0.433, elevators 0.211 against 0.216,
    # puma8nh 0.547 against 0.619, ETTh1 0.250 against 0.252); at R 0.1, P0 0.1 against 1 was better on
    # elevators and ETTh1 (0.211 against 0.216, 0.250 against 0.261), within 2% worse on kin8nm and puma8nh
    move: Literal["gradient", "ekf"] = "ekf"
    move_p0: Positive = 0.3  # ekf move: prior variance of each cell weight (with r: see there)
    move_q: NonNegative = 1e-6  # ekf move: random walk on the cell weights' variance, per tick
    readout_p0: Positive = 1.0  # prior variance of the read-out r (cold start)
    readout_q: NonNegative = 3e-6  # random walk on r, added to Sigma each tick
    readout_q_warm: NonNegative = 1e-6  # from a warm start: the read-out it brings wanders 3x slower
    init_scale: NonNegative = 0.1
    init_spread: NonNegative = 0.02  # particle spread around warm-started weights
    gate_bias: float = 0.5


    def for_warm_start(self) -> PFConfig:
        return dataclasses.replace(self, readout_q=self.readout_q_warm)


class PFLearner(FiniteTensors):
    name = "pf"

    def __init__(self, spec: NetSpec, config: PFConfig = PFConfig(), dtype: torch.dtype = torch.float32):
        self.spec, self.config, self.dtype = spec, config, dtype
        # LSTM with a plain/skip head: each particle's d d_hat^i / d a^i in closed form (`lstm_bptt`, window 1),
        # so the moves need no autograd, and a prediction's pass is the next step's (`models.learners.base`)
        self.closed_form = has_closed_form(spec)
        self.memoises = self.closed_form

    @property
    def autograd(self) -> bool:
        """The moves' gradients by autograd without the closed form (`models.learners.base`)."""
        return not self.closed_form

    def init_state(self, seeds: torch.Tensor, theta0: torch.Tensor | None = None) -> State:
        s, c, B, N = self.spec, self.config, seeds.shape[0], self.config.n_particles
        z = rng.normal_rows(seeds, torch.zeros_like(seeds), rng.STREAM_INIT, N, s.n_theta, self.dtype)  # [B, N, n]
        if theta0 is None:
            theta = init_theta(s, z.reshape(B * N, -1), c.init_scale, c.gate_bias).view(B, N, -1)
            theta[:, :, s.n_cell : s.n_cell + s.n_readout] = 0.0
            p0 = c.readout_p0
        else:
            mask = torch.ones(s.n_theta, dtype=self.dtype)
            mask[s.n_cell : s.n_cell + s.n_readout] = 0  # the read-out's spread is Sigma's job
            theta = theta0.to(self.dtype).view(-1, 1, s.n_theta) + c.init_spread * z * mask  # theta0 [n] or [B, n]
            p0 = c.init_spread**2
        return {
            "cell": theta[:, :, : s.n_cell].contiguous(),  # [B, N, n_cell]  the particles' cell weights
            "head": theta[:, :, s.n_cell :].contiguous(),  # [B, N, n_head]  [mu^i (read-out mean) | gate weights]
            "Sigma": (p0 * torch.eye(s.n_readout, dtype=self.dtype)).expand(B, N, -1, -1).clone(),  # [B, N, nr, nr]
            "h": torch.zeros(B, N, s.state_dim, dtype=self.dtype),  # [B, N, S]  c_t, y_t per particle
            "logw": torch.full((B, N), -math.log(N), dtype=self.dtype),  # [B, N]
            "t": torch.zeros(B, dtype=torch.int64),
            "seed": seeds.clone(),
            **({"Pcell": torch.full((B, N, s.n_cell), c.move_p0 if theta0 is None else c.init_spread**2,
                                    dtype=self.dtype)}  # [B, N, n_cell]  diagonal P of each particle's cell weights
               if c.move == "ekf" else {}),
        }

    def _propagate(self, state: State, x: torch.Tensor, grad: bool = False):
        """One cell step for every particle; returns per-particle predictive moments.

        The last item holds what the moves need: with the closed form (LSTM, plain/skip head) u [BN, q]
        and g = d d_hat^i / d a^i [BN, mG], so H_i = u (x) g; otherwise, with grad=True, autograd leaves
        (the gate pre-activations `a` for an LSTM, which never materialise a [B, N, n_cell] gradient)."""
        s = self.spec
        B, N, _ = state["cell"].shape
        BN = B * N
        h = state["h"].view(BN, -1)  # [BN, S]
        xr = x.unsqueeze(1).expand(B, N, s.n_in).reshape(BN, s.n_in)  # [BN, p]
        if self.closed_form:
            params = unpack_parts(s, state["cell"].view(BN, -1), state["head"].view(BN, -1))
            mean_i, U, Delta, phi, h_new = lstm_bptt(s, params, h, xr.new_empty(BN, 0, s.n_in), xr)
            leaves: dict = {"u": U[:, 0], "g": Delta[:, 0]}  # [BN, q], [BN, mG]
        else:
            head = state["head"].view(BN, -1)
            if grad and s.head == "gated":
                head = head.detach().requires_grad_(True)
            cell_flat = state["cell"].view(BN, -1)
            if grad and s.cell == "gru":
                cell_flat = cell_flat.detach().requires_grad_(True)
            params = unpack_parts(s, cell_flat, head)
            y_prev = split_state(s, h)[1]  # [BN, m]
            u = a = None
            if s.cell == "lstm":
                u, a = lstm_preactivation(params.cell, h, xr, s.hidden)  # [BN, q], [BN, m, 4]
                if grad:
                    a.requires_grad_(True)
                h_new = lstm_activation(a, h[:, : s.hidden])  # [BN, 2m]
            else:
                h_new = cell_step(s, params.cell, h, xr)  # [BN, m]
            phi = readout_features(s, params, split_state(s, h_new)[1], y_prev, xr)  # [BN, nr]
            mean_i = (params.r * phi).sum(dim=1)  # [BN]
            leaves = {"u": u, "a": a, "cell": cell_flat, "head": head}
        R = torch.full((BN,), self.config.r, dtype=phi.dtype)  # [BN]
        Sigma = state["Sigma"].view(BN, s.n_readout, s.n_readout)  # [BN, nr, nr]
        (Sphi,), var_i = kalman.innovation([(Sigma, phi)], R)  # [BN, nr], [BN]
        return h_new.view(B, N, -1), mean_i.view(B, N), Sphi.view(B, N, -1), var_i.view(B, N), leaves

    @staticmethod
    def _mixture(logw: torch.Tensor, mean_i: torch.Tensor, var_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.softmax(logw, dim=1)  # [B, N]
        mean = (w * mean_i).sum(dim=1)  # [B]
        var = (w * (var_i + mean_i * mean_i)).sum(dim=1) - mean * mean  # [B]
        return mean, torch.clamp(var, min=1e-12)

    def predict(self, state: State, x: torch.Tensor, memo: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = self._propagate(state, x)
            if memo is not None and self.memoises:
                memo["propagate"] = out
            _, mean_i, _, var_i, _ = out
            return self._mixture(state["logw"], mean_i, var_i)

    def step(self, state: State, x: torch.Tensor, d: torch.Tensor, memo: dict | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, State]:
        s, c = self.spec, self.config
        B, N, _ = state["cell"].shape
        move = c.grad_step > 0
        if memo:
            h_new, mean_i, Sphi, var_i, leaves = memo["propagate"]
        else:
            grad = move and not self.closed_form
            with torch.set_grad_enabled(grad):
                h_new, mean_i, Sphi, var_i, leaves = self._propagate(state, x, grad=grad)
        innov = (d.unsqueeze(1) - mean_i).detach()  # [B, N]
        var_i = var_i.detach()
        mean, var = self._mixture(state["logw"], mean_i.detach(), var_i)  # the prediction, as `predict` makes it
        if move and c.move == "ekf":
            var_i = self._ekf_move(state, mean_i, innov, var_i, leaves)  # now with the cell weights' share
        elif move:
            self._gradient_move(state, mean_i, innov, leaves)
        h_new, mean_i, Sphi = h_new.detach(), mean_i.detach(), Sphi.detach()
        with torch.no_grad():
            # weights: marginal likelihood of d_t under each particle (read-out integrated out)
            loglik = -0.5 * (torch.log(2 * math.pi * var_i) + innov * innov / var_i)  # [B, N]
            logw = state["logw"] + loglik
            state["logw"] = logw - torch.logsumexp(logw, dim=1, keepdim=True)
            # Rao-Blackwellised read-out: scalar Kalman update of N(mu^i, Sigma^i)
            mu = state["head"][:, :, : s.n_readout]  # [B, N, nr] view
            (dmu,) = kalman.correct([state["Sigma"]], [Sphi], innov, var_i)  # [B, N, nr]; Sigma updated in place
            mu += dmu
            kalman.add_diagonal(state["Sigma"], c.readout_q)
            state["h"] = h_new
            self._resample(state)
            self._transition(state)
            if c.state_noise > 0:
                zh = rng.normal_rows(state["seed"], state["t"], rng.STREAM_STATE, N, s.state_dim, self.dtype)
                state["h"] = state["h"] + c.state_noise * zh
            state["t"] = state["t"] + 1
        return mean, var, state

    def _gradient_move(self, state: State, mean_i: torch.Tensor, innov: torch.Tensor, leaves: dict) -> None:
        """HySIR move: theta^i += grad_step * e_i * d d_hat^i / d theta^i on the nonlinear weights."""
        s, c = self.spec, self.config
        BN = innov.numel()
        if self.closed_form:  # e_i d d_hat^i / d a^i = e_i g_i, and the weights' step is u (x) that
            with torch.no_grad():
                delta = (leaves["g"] * innov.view(BN, 1)).unsqueeze(1)  # [BN, 1, mG]
                state["cell"].view(BN, s.q, -1).baddbmm_(leaves["u"].unsqueeze(2), delta, alpha=c.grad_step)
            return
        objective = (mean_i * innov).sum()
        wrt = [leaves["a"] if s.cell == "lstm" else leaves["cell"]]
        if s.head == "gated":
            wrt.append(leaves["head"])
        grads = torch.autograd.grad(objective, wrt)
        with torch.no_grad():
            cell = state["cell"].view(BN, s.q, -1)  # [BN, q, mG]
            if s.cell == "lstm":
                delta = grads[0].reshape(BN, 1, -1)  # [BN, 1, mG]  e_i d d_hat^i / d a
                cell.baddbmm_(leaves["u"].unsqueeze(2), delta, alpha=c.grad_step)  # += step * u delta^T
            else:
                cell.add_(grads[0].view_as(cell), alpha=c.grad_step)
            if s.head == "gated":
                state["head"].view(BN, -1)[:, s.n_readout :].add_(grads[1][:, s.n_readout :], alpha=c.grad_step)

    def _ekf_move(self, state: State, mean_i: torch.Tensor, innov: torch.Tensor, var_i: torch.Tensor,
                  leaves: dict) -> torch.Tensor:
        """Each particle's diagonal EKF over its cell weights: H_i = d d_hat^i / d cell^i,
        S_i = H_i P_i H_i^T + phi^T Sigma^i phi + R, cell^i += P_i H_i e_i / S_i, P_i -= (P_i H_i)^2 / S_i + q.
        Returns S_i [B, N], the particle's predictive variance with its cell weights' uncertainty, which
        then weighs it (a Gaussian-sum filter) and drives its read-out update."""
        s, c = self.spec, self.config
        B, N = innov.shape
        BN = B * N
        if self.closed_form:
            return self._ekf_move_blocked(state, innov, var_i, leaves["u"].view(B, N, -1), leaves["g"].view(B, N, -1))
        wrt = leaves["a"] if s.cell == "lstm" else leaves["cell"]
        (g,) = torch.autograd.grad(mean_i.sum(), [wrt])  # each particle's own d d_hat^i / d (a or cell)
        with torch.no_grad():
            if s.cell == "lstm":
                H = (leaves["u"].unsqueeze(2) * g.reshape(BN, 1, -1)).reshape(B, N, -1)  # [B, N, n_cell]  u (x) g_a
            else:
                H = g.reshape(B, N, -1)  # [B, N, n_cell]
            return _diagonal_ekf(state["cell"], state["Pcell"], H, innov, var_i, c.move_q)

    def _ekf_move_blocked(self, state: State, innov: torch.Tensor, var_i: torch.Tensor, u: torch.Tensor,
                          g: torch.Tensor) -> torch.Tensor:
        """`_ekf_move` with H_i = u_i (x) g_i never formed whole: per block of keys, with P the diagonal of
        particle i's covariance laid out [q, mG] like its cell weights,

            S_i     = (u_i^2)^T P_i (g_i^2) + phi^T Sigma^i phi + R
            cell_i += P_i * (u_i e_i / S_i) (x) g_i
            P_i    -= P_i * P_i * (u_i^2 / S_i) (x) g_i^2,   + q,  clamped at 1e-12

        (the same arithmetic as `_ekf_move`, in another order). u [B, N, q], g [B, N, mG] -> S [B, N]."""
        s, c = self.spec, self.config
        B, N = innov.shape
        q, mG = s.q, s.hidden * s.n_gates
        cell = state["cell"].view(B, N, q, mG)
        P = state["Pcell"].view(B, N, q, mG)
        if B * N <= MOVE_MAX_ROWS and cell.dtype == P.dtype == u.dtype == g.dtype == innov.dtype == var_i.dtype \
                and cell.is_contiguous() and P.is_contiguous() \
                and MOVE.usable(cell.dtype):  # cell and P are written in place through numpy: laid out flat
            S_rows = np.empty(B * N, NP_FLOAT[cell.dtype])
            MOVE.compiled()(memory(cell).reshape(B * N, q, mG), memory(P).reshape(B * N, q, mG),
                            *(array(t).reshape(B * N, -1) for t in (u, g)),
                            *(array(t).reshape(B * N) for t in (innov, var_i)), c.move_q, S_rows)
            return torch.from_numpy(S_rows).view(B, N)
        u2, g2 = u * u, g * g  # [B, N, q], [B, N, mG]
        S = torch.empty_like(var_i)  # [B, N]
        for b in _blocks(B, N * s.n_cell * P.element_size()):
            Pb = P[b]  # [b, N, q, mG]
            Sb = (torch.matmul(u2[b].unsqueeze(2), Pb).squeeze(2) * g2[b]).sum(dim=2) + var_i[b]  # [b, N]
            step = (u[b] * (innov[b] / Sb).unsqueeze(2)).unsqueeze(3) * g[b].unsqueeze(2)  # [b, N, q, mG]  H e / S
            cell[b].addcmul_(Pb, step)
            shrink = (u2[b] / Sb.unsqueeze(2)).unsqueeze(3) * g2[b].unsqueeze(2)  # [b, N, q, mG]  H^2 / S
            shrink.mul_(Pb)
            Pb.addcmul_(Pb, shrink, value=-1.0).add_(c.move_q).clamp_(min=1e-12)
            S[b] = Sb
        return S

    def update(self, state: State, x: torch.Tensor, d: torch.Tensor) -> State:
        return self.step(state, x, d)[2]

    # --------------------------------------------- the horizons' errors (`base.LearnsFromHorizons`)
    @property
    def n_learned(self) -> int:
        """The cell weights: the read-out is each particle's own Kalman filter's, and stays the one-step one's."""
        return self.spec.n_cell

    def jacobian(self, state: State, x: torch.Tensor, memo: dict | None = None) -> torch.Tensor:
        """J_t [B, n_cell]: the derivative of the published forecast, the mixture mean sum_i w^i d_hat^i, along a
        shift of every particle's cell weights by the same amount: sum_i w^i d d_hat^i / d cell^i. A shift common
        to the particles needs no particle's identity, so it is well defined h ticks later whatever resampling
        has done to them since (one particle's own row would need its lineage kept)."""
        s = self.spec
        B, N, _ = state["cell"].shape
        w = torch.softmax(state["logw"], dim=1)  # [B, N]
        if self.closed_form:
            with torch.no_grad():
                leaves = (memo["propagate"] if memo else self._propagate(state, x))[4]
                u = leaves["u"].view(B, N, -1) * w.unsqueeze(2)  # [B, N, q]  w^i u^i
                return torch.bmm(u.transpose(1, 2), leaves["g"].view(B, N, -1)).reshape(B, -1)  # sum_i w^i u^i (x) g^i
        with torch.enable_grad():
            _, mean_i, _, _, leaves = self._propagate(state, x, grad=True)
            wrt = leaves["a"] if s.cell == "lstm" else leaves["cell"]
            (g,) = torch.autograd.grad((w * mean_i).sum(), [wrt])  # w^i d d_hat^i / d (a^i or cell^i)
        with torch.no_grad():
            if s.cell == "lstm":
                return torch.bmm(leaves["u"].view(B, N, -1).transpose(1, 2), g.reshape(B, N, -1)).reshape(B, -1)
            return g.reshape(B, N, -1).sum(dim=1)

    def learned_weights(self, state: State) -> torch.Tensor:
        """The particles' weighted mean cell weights [B, n_cell]: what a common shift moves."""
        w = torch.softmax(state["logw"], dim=1)  # [B, N]
        return torch.bmm(w.unsqueeze(1), state["cell"]).squeeze(1)

    def learn_from(self, state: State, H: torch.Tensor, e: torch.Tensor, r_scale: torch.Tensor) -> None:
        """One more measurement of the cell weights, in place: row H [B, n_cell], innovation e [B], noise
        r_scale [B] x R. With the EKF move each particle takes it through its own diagonal filter,

            S^i = H P^i H^T + r R,   cell^i += P^i H^T e / S^i,   P^i -= (P^i H^T)^2 / S^i,

        as its move takes the one-step error; with the gradient move, the fixed step grad_step e H / r. The
        particles' weights are not changed: that would need each particle's own forecast of h ticks ago."""
        c = self.config
        with torch.no_grad():
            if "Pcell" not in state:
                state["cell"].add_((H * (e / r_scale).unsqueeze(1)).unsqueeze(1), alpha=c.grad_step)
                return
            B, N, n = state["cell"].shape
            R = r_scale * c.r  # [B]
            for b in _blocks(B, N * n * state["Pcell"].element_size()):  # the row is common: [b, 1, n]
                _diagonal_ekf(state["cell"][b], state["Pcell"][b], H[b].unsqueeze(1), e[b].unsqueeze(1),
                              R[b].unsqueeze(1), 0.0)

    def _resample(self, state: State) -> None:
        """Systematic resampling (Kitagawa 1996) of the series whose N_eff fell below threshold."""
        N = state["logw"].shape[1]
        w = torch.exp(state["logw"])  # [B, N]
        n_eff = 1.0 / (w * w).sum(dim=1)  # [B]
        rows = torch.nonzero(n_eff < self.config.threshold * N).squeeze(1)  # [B']
        if rows.numel() == 0:
            return
        u0 = rng.uniform(state["seed"][rows], state["t"][rows], rng.STREAM_RESAMPLE, 1, w.dtype)  # [B', 1]
        idx = systematic_indices(w[rows], u0)  # [B', N]
        for name in ("cell", "head", "Sigma", "h", "Pcell"):
            if name not in state:
                continue
            t = state[name]
            sub = t[rows]  # [B', N, ...]
            gather_idx = idx.view(*idx.shape, *([1] * (sub.dim() - 2))).expand_as(sub)
            t[rows] = torch.gather(sub, 1, gather_idx)
        state["logw"][rows] = -math.log(N)

    def _transition(self, state: State) -> None:
        """theta_t = theta_{t-1} + eta_t on the weights the particles explore (in place)."""
        c, s = self.config, self.spec
        if c.theta_noise <= 0 and c.transition == "random_walk":
            return
        parts = [state["cell"]]
        if s.head == "gated":
            parts.append(state["head"][:, :, s.n_readout :])
        for k, part in enumerate(parts):
            B, N, n = part.shape
            stream = rng.STREAM_WALK + 16 * k
            if c.transition == "random_walk":
                if B * N <= rng.WALK_MAX_ROWS:  # a few keys: one compiled pass hashes and adds (`rng.add_normal_rows`)
                    rng.add_normal_rows(part, state["seed"], state["t"], stream, c.theta_noise)
                    continue
                for b in _blocks(B, N * n * part.element_size()):  # a block of keys at a time: its noise stays in cache
                    rng.add_normal_rows(part[b], state["seed"][b], state["t"][b], stream, c.theta_noise, compiled=False)
                continue
            eps = rng.normal_rows(state["seed"], state["t"], stream, N, n, self.dtype)  # [B, N, n]
            w = torch.softmax(state["logw"], dim=1).unsqueeze(2)  # [B, N, 1]
            mean = (w * part).sum(dim=1, keepdim=True)  # [B, 1, n]
            sd = ((w * (part - mean) ** 2).sum(dim=1, keepdim=True)).sqrt()  # [B, 1, n]
            a = c.shrink
            part.mul_(a).add_((1 - a) * mean).addcmul_(sd, eps, value=math.sqrt(1 - a * a))

    def health_tensors(self, state: State) -> tuple[torch.Tensor, ...]:
        return state["logw"], state["h"]


def _diagonal_ekf(cell: torch.Tensor, P: torch.Tensor, H: torch.Tensor, innov: torch.Tensor, var: torch.Tensor,
                  q: float) -> torch.Tensor:
    """Each particle's EKF step with a diagonal covariance, in place: S = H P H^T + var, cell += P H^T e / S,
    P -= (P H^T)^2 / S, + q, clamped at 1e-12. cell, P [B, N, n]; H [B, N or 1, n]; innov, var [B, N or 1]
    -> S [B, N]."""
    PH = P * H  # [B, N, n]  a diagonal P: P H^T elementwise
    S = (PH * H).sum(dim=2) + var  # [B, N]
    cell.addcmul_(PH, (innov / S).unsqueeze(2))
    P.addcmul_(PH, PH / S.unsqueeze(2), value=-1.0).add_(q)
    torch.clamp_(P, min=1e-12)
    return S


# A wave of at most this many particles (keys x N) takes the compiled EKF move (`_move_rows`): one pass over
# each particle's cell weights and their P where torch makes eight. Measured (benchmarks/speed.py): ahead at one
# and 16 keys of 64 particles; wider waves keep torch's blocked passes, which its threads share.
MOVE_MAX_ROWS = 16 * 64


def _move_rows(cell, P, u, g, innov, var, q_noise, S):  # pragma: no cover - compiled
    """`PFLearner._ekf_move_blocked` one particle at a time: cell, P [BN, q, mG] in place; u [BN, q], g [BN, mG],
    innov, var [BN]; writes S [BN]."""
    BN, q, mG = cell.shape
    for r in range(BN):
        acc = 0.0
        for a in range(q):
            ua2 = u[r, a] * u[r, a]
            for k in range(mG):
                acc += ua2 * P[r, a, k] * (g[r, k] * g[r, k])
        s = acc + var[r]
        S[r] = s
        gain = innov[r] / s
        for a in range(q):
            ue = u[r, a] * gain
            ua2 = u[r, a] * u[r, a] / s
            for k in range(mG):
                p = P[r, a, k]
                cell[r, a, k] += p * (ue * g[r, k])
                p = p - p * (ua2 * g[r, k] * g[r, k] * p) + q_noise
                if p < 1e-12:  # as torch's clamp: NaN stays NaN
                    p = 1e-12
                P[r, a, k] = p


def _warm_up(dtype: torch.dtype) -> None:
    """Run the loop once for this float width, on one particle of one weight (compiling or loading it)."""
    dt = NP_FLOAT[dtype]
    MOVE.compiled()(np.zeros((1, 1, 1), dt), np.ones((1, 1, 1), dt), np.ones((1, 1), dt), np.ones((1, 1), dt),
                    np.zeros(1, dt), np.ones(1, dt), 0.0, np.zeros(1, dt))


MOVE = Kernel(_move_rows, _warm_up, "particle filter's EKF move")


def _blocks(B: int, bytes_per_key: int) -> list[slice]:
    """Consecutive slices of B keys, each about _BLOCK_BYTES of one [key, ...] tensor (at least one key)."""
    step = max(1, _BLOCK_BYTES // max(1, bytes_per_key))
    return [slice(b, min(B, b + step)) for b in range(0, B, step)]


def systematic_indices(w: torch.Tensor, u0: torch.Tensor) -> torch.Tensor:
    """Systematic resampling: ancestors [B, N] for weights w [B, N] and one U[0,1) per row u0 [B, 1].

    Particle i is copied floor(N w_i) or ceil(N w_i) times (the lowest-variance scheme).
    """
    N = w.shape[1]
    u = (u0 + torch.arange(N, dtype=w.dtype).unsqueeze(0)) / N  # [B, N] stratified points
    cw = torch.cumsum(w / w.sum(dim=1, keepdim=True), dim=1)  # [B, N]
    cw[:, -1] = 1.0  # guard against round-off leaving the last point uncovered
    return torch.clamp(torch.searchsorted(cw, u.contiguous(), right=True), max=N - 1)
