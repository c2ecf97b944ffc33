"""Online SGD (Ergen & Kozat 2018, the first-order learner), batched over series.

    e_t       = d_t - d_hat_t
    theta_t+1 = theta_t + mu_t * e_t * d d_hat_t / d theta         (descent on e_t^2 / 2)

The gradient runs through a truncated BPTT window (see `window.py`); window 1 is the paper's
instantaneous update. mu_t is constant or decays as mu_0 / (1 + t / tau). The default, per series:
Adam (Kingma & Ba) on the cell weights, whose per-weight normalised step does not diverge where
one plain step size fits one stream and blows up on the next, and the normalised LMS step
mu / (1 + |phi|^2) on the read-out r (the estimate is linear in r given phi, and NLMS is the
classical adaptive filter there: stable for 0 < mu < 2, whatever the scale), mu between 0.1 and 0.4
by the lag-1 correlation of the key's errors (a variable step size: larger while the estimate lags,
smaller on noise). `optimizer="sgd"` is
the paper's plain descent; `optimizer="normalized"` divides the whole step by 1 + |H|^2. The
per-series gradient is clipped in norm so that one outlier tick cannot throw the weights far.
Predictive variance: an exponentially weighted mean of past squared errors (the only uncertainty
SGD has).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from models.cells import NetSpec
from models.learners import adam_kernel
from models.learners.base import Count, FiniteTensors, NonNegative, Positive, Share, State, cold_theta
from models.learners.window import (
    bptt_jacobian,
    has_closed_form,
    lstm_bptt,
    window_advance,
    window_forward,
    window_init,
    window_jacobian,
    window_jacobian_parts,
)


@dataclass(frozen=True)
class SGDConfig:
    # Adam on the cell (step 0.01) with the NLMS read-out (head_step..head_step_max), the instantaneous gradient
    # (window 1):
    # measured with the defaults (RESULTS "How the defaults were chosen"), it beats the previous default
    # (plain step 0.02, window 10) on every stream: kin8nm 0.412 against 0.621, elevators 0.278 against
    # 0.298, puma8nh 0.587 against 0.707, ETTh1 0.287 against 0.302.
    lr: NonNegative = 0.01
    lr_warm: NonNegative = 0.001  # from a warm start: fine-tuning, a step 10x smaller keeps what history taught
    window: Count = 1
    schedule: Literal["constant", "inverse"] = "constant"
    tau: Positive = 1000.0  # inverse schedule: mu_t = lr / (1 + t / tau)
    optimizer: Literal["sgd", "adam", "normalized"] = "adam"
    # adam: the read-out r (the weights the estimate is linear in) takes the NLMS step head_step / (1 + |phi|^2)
    # instead (0: Adam for every weight). Adam's per-weight step moves ~1,400 weights by ~lr each tick, noise
    # that costs nothing on a noisy regression stream and a lot on a smooth tick stream: measured on the
    # demo's keys, Adam alone lost to persistence by 47-84% on two of them, with this step it beats it on three
    # and ties on the fourth (RESULTS "How the defaults were chosen").
    head_step: NonNegative = 0.1
    # > head_step: the read-out's step moves between head_step and this with the lag-1 correlation rho of
    # the key's errors (running means of e_t e_t-1 and e_t^2, both from 0 so that their start-up bias cancels in
    # the ratio and a new key's rho is its own from the first ticks): correlated errors mean the estimate lags a
    # moving target (a bigger step tracks it), white ones mean noise (a smaller one averages it out), after
    # the variable step-size LMS of Kwong & Johnston 1992 / Aboulnasr & Mayyas 1997. 0: a fixed head_step.
    # Measured (RESULTS "How the defaults were chosen"): a fixed step that is good on the noisy regression
    # streams (0.1-0.15) loses to persistence on the demo's smooth keys, one good there (0.2) is 3-5% behind
    # on the regression streams; 0.1-0.4 is ahead of 0.2 on every stream and of persistence on every demo key.
    head_step_max: NonNegative = 0.4
    norm_eps: Positive = 1.0  # normalized: mu_t / (norm_eps + |H_t|^2), the NLMS step (regularised for |H| ~ 0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: Positive = 1e-8
    clip: Positive = 10.0  # max norm of the per-series gradient step e_t * H_t
    var_decay: Share = 0.02  # weight of the newest squared error in the running variance
    init_scale: NonNegative = 0.1
    gate_bias: float = 0.5


    def for_warm_start(self) -> SGDConfig:
        # every step shrinks alike: the read-out's NLMS step by the same factor as lr
        shrink = self.lr_warm / self.lr if self.lr > 0 else 0.0
        return dataclasses.replace(self, lr=self.lr_warm, head_step=self.head_step * shrink,
                                   head_step_max=self.head_step_max * shrink)


class SGDLearner(FiniteTensors):
    name = "sgd"

    def __init__(self, spec: NetSpec, config: SGDConfig = SGDConfig(), dtype: torch.dtype = torch.float32):
        self.spec, self.config, self.dtype = spec, config, dtype
        # the read-out's step varies (and the key keeps its error correlation) only where there is a read-out step
        self._variable_step = 0 < config.head_step < config.head_step_max
        # with the closed-form gradient, a prediction can run its forward pass as the gradient's and leave
        # it for the next step (`models.learners.base`): one pass a tick instead of two
        self.memoises = has_closed_form(spec)
        c = config
        # the compiled step's settings (`adam_kernel`), in its argument order
        self._kernel_cfg = np.array([c.lr, c.tau, c.clip, *c.betas, c.eps, c.head_step, c.head_step_max, c.var_decay])
        self._kernel_flags = np.array([c.schedule == "inverse", c.head_step > 0, self._variable_step])

    @property
    def autograd(self) -> bool:
        """The gradient by autograd where `lstm_bptt` does not apply (`models.learners.base`)."""
        return not self.memoises

    def init_state(self, seeds: torch.Tensor, theta0: torch.Tensor | None = None) -> State:
        B, c = seeds.shape[0], self.config
        if theta0 is None:
            theta = cold_theta(self.spec, seeds, c.init_scale, c.gate_bias, self.dtype)  # [B, n]
        else:
            theta = theta0.to(self.dtype).expand(B, -1).clone()
        state: State = {
            "theta": theta,
            "r2": torch.ones(B, dtype=self.dtype),  # running mean of e^2
            "t": torch.zeros(B, dtype=torch.int64),
            "seed": seeds.clone(),
            **window_init(self.spec, c.window, B, self.dtype),
        }
        if c.optimizer == "adam":
            state["m1"] = torch.zeros_like(theta)
            state["m2"] = torch.zeros_like(theta)
        if self._variable_step:
            state["e_prev"] = torch.zeros(B, dtype=self.dtype)  # [B]  the last error
            state["e_corr"] = torch.zeros(B, dtype=self.dtype)  # [B]  running mean of e_t e_t-1
            state["e_sq"] = torch.zeros(B, dtype=self.dtype)  # [B]  running mean of e_t^2, from 0 as e_corr
        return state

    @property
    def added_state(self) -> tuple[str, ...]:
        """State that snapshots written before the read-out's variable step lack (`base.added_state`)."""
        return ("e_prev", "e_corr", "e_sq") if self._variable_step else ()

    def _head_step(self, state: State, e: torch.Tensor) -> torch.Tensor | float:
        """The read-out's NLMS step [B] (or the fixed one), from the errors' lag-1 correlation."""
        c = self.config
        if not self._variable_step:
            return c.head_step
        state["e_corr"] = (1 - c.var_decay) * state["e_corr"] + c.var_decay * e * state["e_prev"]
        state["e_sq"] = (1 - c.var_decay) * state["e_sq"] + c.var_decay * e * e
        state["e_prev"] = e.clone()
        rho = torch.clamp(state["e_corr"] / torch.clamp(state["e_sq"], min=1e-12), 0.0, 1.0)  # [B]
        return c.head_step + (c.head_step_max - c.head_step) * rho

    def predict(self, state: State, x: torch.Tensor, memo: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            if self.memoises:  # the closed form: the pass the step takes, so the two predict alike to the bit
                bptt = lstm_bptt(self.spec, state["theta"], state["h0"], state["xbuf"], x)
                if memo is not None:
                    memo["bptt"] = bptt
                return bptt[0], state["r2"].clone()
            d_hat, _ = window_forward(self.spec, state["theta"], state["h0"], state["xbuf"], x)
        return d_hat, state["r2"].clone()

    def step(self, state: State, x: torch.Tensor, d: torch.Tensor, memo: dict | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, State]:
        if self.memoises:
            return self._closed_form_step(state, x, d, memo)
        return self._autograd_step(state, x, d)

    def _autograd_step(
        self, state: State, x: torch.Tensor, d: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Any window, cell and head: H by autograd through the window."""
        c = self.config
        d_hat, (Hc, Hh), h_first = window_jacobian_parts(self.spec, state["theta"], state["h0"], state["xbuf"], x)
        nc = self.spec.n_cell
        var = state["r2"].clone()
        e = d - d_hat  # [B]
        with torch.no_grad():
            t = state["t"].to(self.dtype)
            lr = self._lr(t)  # [B]
            # the ascent direction is e * H; its norm |e| |H| is clipped to `clip`
            scale = self._clipped(e, torch.sqrt((Hc * Hc).sum(dim=1) + (Hh * Hh).sum(dim=1)))  # [B]
            if c.optimizer == "adam":
                phi2 = (Hh[:, : self.spec.n_readout] ** 2).sum(dim=1)  # [B]  d d_hat / d r = phi
                self._adam(state, torch.cat([Hc, Hh], dim=1) * scale.unsqueeze(1), t, lr, phi2,
                           self._head_step(state, e))
            else:
                gain = lr * scale  # [B]
                if c.optimizer == "normalized":
                    gain = gain / (c.norm_eps + (Hc * Hc).sum(dim=1) + (Hh * Hh).sum(dim=1))
                gain = gain.unsqueeze(1)  # [B, 1]
                state["theta"][:, :nc].addcmul_(Hc, gain)
                state["theta"][:, nc:].addcmul_(Hh, gain)
            self._finish(state, x, e, h_first)
        return d_hat, var, state

    def _closed_form_step(
        self, state: State, x: torch.Tensor, d: torch.Tensor, memo: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """LSTM with a plain/skip head: the closed-form BPTT gradient, applied without autograd."""
        s = self.spec
        with torch.no_grad():
            d_hat, U, Delta, phi, h_first = (memo["bptt"] if memo else
                                             lstm_bptt(s, state["theta"], state["h0"], state["xbuf"], x))
            var = state["r2"].clone()
            if self._compiled_step(state, x):  # a small wave: the rest of the step in one compiled call
                B = x.shape[0]
                scratch = x.new_zeros(3, B) if not self._variable_step else None
                e_prev, e_corr, e_sq = ((state["e_prev"], state["e_corr"], state["e_sq"]) if scratch is None
                                        else scratch.unbind(0))
                adam_kernel.step(state["theta"], state["m1"], state["m2"], U, Delta, phi, d_hat, d, state["t"],
                                 e_prev, e_corr, e_sq, state["r2"], self._kernel_cfg, self._kernel_flags,
                                 s.n_readout)
                state["t"] = state["t"] + 1
                window_advance(state, x, h_first)
                return d_hat, var, state
            e = d - d_hat  # [B]
            if U.shape[1] == 1:  # |u (x) delta| = |u| |delta|: no need to form H_cell
                Hc = None
                hc2 = (U[:, 0] * U[:, 0]).sum(dim=1) * (Delta[:, 0] * Delta[:, 0]).sum(dim=1)  # [B]
            else:
                Hc = torch.bmm(U.transpose(1, 2), Delta)  # [B, q, mG]  sum_k u_k delta_k^T
                hc2 = (Hc * Hc).sum(dim=(1, 2))
            h_norm = torch.sqrt(hc2 + (phi * phi).sum(dim=1))  # |H|
            t = state["t"].to(self.dtype)
            if self.config.optimizer == "adam":
                scale = self._clipped(e, h_norm)  # [B]
                B = x.shape[0]
                g = x.new_empty(B, s.n_theta)  # [B, n]  the ascent direction e H, scaled, built in place
                if Hc is None:  # u (x) delta, one pass
                    torch.mul((U[:, 0] * scale.unsqueeze(1)).unsqueeze(2), Delta[:, 0].unsqueeze(1),
                              out=g[:, : s.n_cell].view(B, s.q, -1))
                else:
                    torch.mul(Hc.reshape(B, -1), scale.unsqueeze(1), out=g[:, : s.n_cell])
                torch.mul(phi, scale.unsqueeze(1), out=g[:, s.n_cell :])
                self._adam(state, g, t, self._lr(t), (phi * phi).sum(dim=1), self._head_step(state, e))
                self._finish(state, x, e, h_first)
                return d_hat, var, state
            gain = self._lr(t) * self._clipped(e, h_norm)  # [B]
            if self.config.optimizer == "normalized":
                gain = gain / (self.config.norm_eps + h_norm * h_norm)
            cell = state["theta"][:, : s.n_cell].view(-1, s.q, s.hidden * s.n_gates)  # [B, q, mG]
            if Hc is None:
                cell.addcmul_(U[:, 0].unsqueeze(2), (Delta[:, 0] * gain.unsqueeze(1)).unsqueeze(1))
            else:
                cell.addcmul_(Hc, gain.view(-1, 1, 1))
            state["theta"][:, s.n_cell :].addcmul_(phi, gain.unsqueeze(1))
            self._finish(state, x, e, h_first)
        return d_hat, var, state

    def _compiled_step(self, state: State, x: torch.Tensor) -> bool:
        """Whether this step takes `adam_kernel`: Adam, a wave of at most its MAX_WORK weights, the state it writes
        in place laid out flat and of one float width, and the loop compiled here."""
        if self.config.optimizer != "adam" or x.shape[0] * self.spec.n_theta > adam_kernel.MAX_WORK:
            return False
        names = ("theta", "m1", "m2", "r2", "e_prev", "e_corr", "e_sq") if self._variable_step else (
            "theta", "m1", "m2", "r2")
        for k in names:
            v = state[k]
            if v.dtype != self.dtype or not v.is_contiguous() or v.requires_grad:
                return False
        return adam_kernel.KERNEL.usable(self.dtype)

    # --------------------------------------------- the horizons' errors (`base.LearnsFromHorizons`)
    @property
    def n_learned(self) -> int:
        return self.spec.n_theta

    def jacobian(self, state: State, x: torch.Tensor, memo: dict | None = None) -> torch.Tensor:
        """H = d d_hat / d theta [B, n_theta] of the forecast from x: from the memo's BPTT pass when given."""
        if self.memoises:
            with torch.no_grad():
                _, U, Delta, phi, _ = (memo["bptt"] if memo else
                                       lstm_bptt(self.spec, state["theta"], state["h0"], state["xbuf"], x))
                return bptt_jacobian(U, Delta, phi)
        return window_jacobian(self.spec, state["theta"], state["h0"], state["xbuf"], x)[1]

    def learned_weights(self, state: State) -> torch.Tensor:
        return state["theta"]

    def learn_from(self, state: State, H: torch.Tensor, e: torch.Tensor, r_scale: torch.Tensor) -> None:
        """One more descent step, on e^2 / (2 r) of an output with Jacobian H [B, n] (e, r [B]), in place.

        The one-step loss weighs its error by 1 / (SGD's own noise, the running e^2), so a measurement with
        r times that noise takes the step direction e H / r, clipped in norm as the one-step one is. Each
        optimizer steps as it does on the one-step gradient, without touching its running state: Adam
        divides by its current sqrt(v_hat) + eps and each weight moves by at most lr (Adam's own bound on
        a step; a weight the one-step errors hardly moved has a v_hat near 0); the read-out takes the NLMS
        step head_step e H_r / (r (1 + |H_r|^2)); plain SGD lr e H / r, `normalized` that over 1 + |H|^2."""
        c, s = self.config, self.spec
        with torch.no_grad():
            h_norm = torch.sqrt((H * H).sum(dim=1))  # [B]
            g = H * (self._clipped(e, h_norm) / r_scale).unsqueeze(1)  # [B, n]  the ascent direction
            t = state["t"].to(self.dtype)
            lr = self._lr(t).unsqueeze(1)  # [B, 1]
            theta = state["theta"]
            if c.optimizer != "adam":
                if c.optimizer == "normalized":
                    lr = lr / (c.norm_eps + h_norm * h_norm).unsqueeze(1)
                theta.addcmul_(g, lr)
                return
            k = torch.clamp(t, min=1).unsqueeze(1)  # [B, 1]  the steps the moments have seen
            denom = (state["m2"] / (1 - c.betas[1] ** k)).sqrt_().add_(c.eps)  # [B, n]  sqrt(v_hat) + eps
            step = (g / denom).clamp_(-1.0, 1.0).mul_(lr)  # [B, n]
            if c.head_step > 0:
                r = slice(s.n_cell, s.n_cell + s.n_readout)
                Hr = H[:, r]  # [B, nr]
                step[:, r] = g[:, r] * (c.head_step / (1.0 + (Hr * Hr).sum(dim=1))).unsqueeze(1)
            theta.add_(step)

    def _adam(self, state: State, g: torch.Tensor, t: torch.Tensor, lr: torch.Tensor, phi2: torch.Tensor,
              head_step: torch.Tensor | float) -> None:
        """theta += lr m_hat / (sqrt(v_hat) + eps) for the ascent direction g = e H [B, n], per series (in
        torch.optim.Adam's arrangement: few passes over [B, n], theta in place); with head_step > 0 the
        read-out r instead takes r += head_step e phi / (1 + |phi|^2) (phi2 = |phi|^2 [B])."""
        c = self.config
        b1, b2 = c.betas
        state["m1"].mul_(b1).add_(g, alpha=1 - b1)
        state["m2"].mul_(b2).addcmul_(g, g, value=1 - b2)
        k = (t + 1).unsqueeze(1)  # [B, 1]  the series' own step count
        step = lr.unsqueeze(1) / (1 - b1**k)  # [B, 1]  lr / (1 - b1^k)
        denom = state["m2"].sqrt().div_(torch.sqrt(1 - b2**k)).add_(c.eps)  # [B, n]  sqrt(v_hat) + eps
        theta = state["theta"]
        r = slice(self.spec.n_cell, self.spec.n_cell + self.spec.n_readout)
        r_old = theta[:, r].clone() if c.head_step > 0 else None
        theta.addcdiv_(state["m1"] * step, denom)
        if r_old is not None:
            theta[:, r] = r_old + g[:, r] * (head_step / (1.0 + phi2)).unsqueeze(1)

    def _lr(self, t: torch.Tensor) -> torch.Tensor:
        c = self.config
        return torch.full_like(t, c.lr) if c.schedule == "constant" else c.lr / (1 + t / c.tau)  # [B]

    def _clipped(self, e: torch.Tensor, h_norm: torch.Tensor) -> torch.Tensor:
        """e scaled so that the step's norm |e| |H| is at most `clip`."""
        return e * torch.clamp(self.config.clip / (e.abs() * h_norm + 1e-12), max=1.0)

    def _finish(self, state: State, x: torch.Tensor, e: torch.Tensor, h_first: torch.Tensor) -> None:
        c = self.config
        state["r2"] = (1 - c.var_decay) * state["r2"] + c.var_decay * e * e
        state["t"] = state["t"] + 1
        window_advance(state, x, h_first)

    def update(self, state: State, x: torch.Tensor, d: torch.Tensor) -> State:
        return self.step(state, x, d)[2]

    def health_tensors(self, state: State) -> tuple[torch.Tensor, ...]:
        return state["theta"], state["h0"], state["r2"]
