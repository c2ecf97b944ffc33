"""Truncated back-propagation through time over the last W inputs, for many series at once.

The gradient-based learners (SGD, EKF, DEKF) keep, per series, the recurrent state h0 from
W-1 ticks ago and the W-1 inputs since (`xbuf`, normalised as they were). At each tick they
re-run the cell over [xbuf, x_t] from h0 with the current theta, so d d_hat_t / d theta flows
through W steps of the recurrence (W = 1 is the paper's instantaneous update, where y_{t-1},
c_{t-1} are treated as constants). A new series starts as if preceded by W-1 zero inputs
(zero = the mean after normalisation), so every series in a batch has the same window
length and no Python loop over series is needed.
"""

from __future__ import annotations

import torch

from models.cells import NetSpec, Params, cell_step, lstm_preactivation, split_state, unpack, unpack_parts
from models.heads import estimate, readout_features
from models.learners.base import State


def window_init(spec: NetSpec, window: int, B: int, dtype: torch.dtype) -> State:
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return {
        "h0": torch.zeros(B, spec.state_dim, dtype=dtype),  # [B, S]
        "xbuf": torch.zeros(B, window - 1, spec.n_in, dtype=dtype),  # [B, W-1, p]
    }


def window_forward(
    spec: NetSpec, theta: torch.Tensor | Params, h0: torch.Tensor, xbuf: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the cell over [xbuf, x] from h0. Returns (d_hat [B], state after the first input [B, S])."""
    params = theta if isinstance(theta, Params) else unpack(spec, theta)
    xs = torch.cat([xbuf, x.unsqueeze(1)], dim=1)  # [B, W, p]
    h = h0
    h_first = h0
    y_prev = split_state(spec, h)[1]
    for k in range(xs.shape[1]):
        y_prev = split_state(spec, h)[1]  # [B, m]
        h = cell_step(spec, params.cell, h, xs[:, k])  # [B, S]
        if k == 0:
            h_first = h
    y = split_state(spec, h)[1]  # [B, m]
    return estimate(spec, params, y, y_prev, x), h_first


def window_jacobian(
    spec: NetSpec, theta: torch.Tensor, h0: torch.Tensor, xbuf: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d_hat [B], H = d d_hat / d theta [B, n_theta], state after the first input [B, S]).

    Series do not share parameters, so the gradient of sum_b d_hat_b is row b's own Jacobian.
    """
    d_hat, (Hc, Hh), h_first = window_jacobian_parts(spec, theta, h0, xbuf, x)
    return d_hat, torch.cat([Hc, Hh], dim=1), h_first


def window_jacobian_parts(
    spec: NetSpec, theta: torch.Tensor, h0: torch.Tensor, xbuf: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """As `window_jacobian`, with H as its cell [B, n_cell] and head [B, n_head] parts (no concatenation)."""
    with torch.enable_grad():
        cell = theta[:, : spec.n_cell].detach().requires_grad_(True)
        head = theta[:, spec.n_cell :].detach().requires_grad_(True)
        d_hat, h_first = window_forward(spec, unpack_parts(spec, cell, head), h0, xbuf, x)
        Hc, Hh = torch.autograd.grad(d_hat.sum(), (cell, head))
    return d_hat.detach(), (Hc, Hh), h_first.detach()


def window_advance(state: State, x: torch.Tensor, h_first: torch.Tensor) -> None:
    """Slide the window by one tick, in place."""
    if state["xbuf"].shape[1] > 0:
        state["xbuf"] = torch.cat([state["xbuf"][:, 1:], x.unsqueeze(1)], dim=1)
    state["h0"] = h_first


def has_instant_gradient(spec: NetSpec, window: int) -> bool:
    """Whether `instant_lstm_gradient` applies: window 1, LSTM cell, a head linear in x."""
    return window == 1 and spec.cell == "lstm" and spec.head in ("plain", "skip")


def instant_lstm_gradient(
    spec: NetSpec, theta: torch.Tensor, h0: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's instantaneous gradient (window 1, y_{t-1} and c_{t-1} held constant), in closed form.

    With u = [x_t; y_{t-1}; 1] and a = u^T cell the gate pre-activations, d_hat = r . phi and

        d d_hat / d y   = w
        delta_o = w * tanh(c) * o (1 - o)           delta_c = w * o * (1 - tanh(c)^2)
        delta_z = delta_c * i * (1 - z^2)           delta_i = delta_c * z * i (1 - i)
        delta_f = delta_c * c_{t-1} * f (1 - f)

    so H_cell = u (x) delta (an outer product, never materialised) and H_head = phi.
    Returns (d_hat [B], u [B, q], delta [B, m*G], phi [B, n_readout], new state [B, 2m]).
    """
    m = spec.hidden
    params = unpack(spec, theta)
    c_prev = h0[:, :m]  # [B, m]
    u, a = lstm_preactivation(params.cell, h0, x, m)  # [B, q], [B, m, 4]
    z = torch.tanh(a[:, :, 0])  # [B, m]
    g = torch.sigmoid(a[:, :, 1:])  # [B, m, 3]  i, f, o
    i, f, o = g[:, :, 0], g[:, :, 1], g[:, :, 2]
    c = i * z + f * c_prev  # [B, m]
    tc = torch.tanh(c)  # [B, m]
    y = o * tc  # [B, m]
    phi = readout_features(spec, params, y, h0[:, m:], x)  # [B, nr]
    d_hat = (params.r * phi).sum(dim=1)  # [B]
    dc = params.w * o * (1 - tc * tc)  # [B, m]
    dgates = g * (1 - g) * torch.stack([dc * z, dc * c_prev, params.w * tc], dim=2)  # [B, m, 3]  i, f, o
    delta = torch.cat([(dc * i * (1 - z * z)).unsqueeze(2), dgates], dim=2).reshape(x.shape[0], -1)  # [B, m*4]
    return d_hat, u, delta, phi, torch.cat([c, y], dim=1)
