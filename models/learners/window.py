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

from models.cells import NetSpec, Params, cell_step, split_state, unpack, unpack_parts
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


def has_closed_form(spec: NetSpec) -> bool:
    """Whether `lstm_bptt` applies: an LSTM cell and a head linear in x (plain or skip)."""
    return spec.cell == "lstm" and spec.head in ("plain", "skip")


def lstm_bptt(
    spec: NetSpec, theta: torch.Tensor | Params, h0: torch.Tensor, xbuf: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated BPTT over the window in closed form (no autograd), for the LSTM.

    Forward over u_k = [x_k; y_{k-1}; 1], k = 1..W, keeping the gates; then, from dy_W = w,

        do_k = dy_k * tanh(c_k)                     dc_k += dy_k * o_k * (1 - tanh(c_k)^2)
        delta_k = [dc_k i_k (1 - z_k^2), dc_k z_k i_k (1 - i_k), dc_k c_{k-1} f_k (1 - f_k), do_k o_k (1 - o_k)]
        dy_{k-1} = (cell delta_k)[p : p+m]          dc_{k-1} = dc_k * f_k

    so H_cell = sum_k u_k (x) delta_k (one batched product) and H_head = phi. Window 1 is the
    paper's instantaneous gradient. Returns (d_hat [B], U [B, W, q], Delta [B, W, m*G],
    phi [B, n_readout], state after the first input [B, 2m]); H_cell = U^T Delta.
    """
    m, p = spec.hidden, spec.n_in
    params = theta if isinstance(theta, Params) else unpack(spec, theta)
    xs = torch.cat([xbuf, x.unsqueeze(1)], dim=1) if xbuf.shape[1] else x.unsqueeze(1)  # [B, W, p]
    B, W = xs.shape[0], xs.shape[1]
    ones = x.new_ones(B, 1)
    c, y = h0[:, :m], h0[:, m:]  # [B, m] each
    us, zs, gs, tcs, c_prevs = [], [], [], [], []
    h_first = h0
    for k in range(W):
        u = torch.cat([xs[:, k], y, ones], dim=1)  # [B, q]
        a = torch.bmm(u.unsqueeze(1), params.cell).view(B, m, 4)  # [B, m, 4] pre-activations
        z = torch.tanh(a[:, :, 0])  # [B, m]
        g = torch.sigmoid(a[:, :, 1:])  # [B, m, 3]  i, f, o
        c_prevs.append(c)
        c = g[:, :, 0] * z + g[:, :, 1] * c  # [B, m]
        tc = torch.tanh(c)  # [B, m]
        y = g[:, :, 2] * tc  # [B, m]
        us.append(u)
        zs.append(z)
        gs.append(g)
        tcs.append(tc)
        if k == 0:
            h_first = torch.cat([c, y], dim=1)  # [B, 2m]
    y_prev = h0[:, m:] if W == 1 else us[-1][:, p : p + m]  # y_{W-1}
    phi = readout_features(spec, params, y, y_prev, x)  # [B, nr]
    d_hat = (params.r * phi).sum(dim=1)  # [B]
    # The local derivatives of every step at once (elementwise in the stored activations), so the
    # backward recursion is a few operations a step: for few keys the number of torch calls is the cost.
    Z = torch.stack(zs, dim=1) if W > 1 else zs[0].unsqueeze(1)  # [B, W, m]
    Gt = torch.stack(gs, dim=1) if W > 1 else gs[0].unsqueeze(1)  # [B, W, m, 3]  i, f, o
    TC = torch.stack(tcs, dim=1) if W > 1 else tcs[0].unsqueeze(1)  # [B, W, m]
    CP = torch.stack(c_prevs, dim=1) if W > 1 else c_prevs[0].unsqueeze(1)  # [B, W, m]
    dG = Gt * (1 - Gt)  # [B, W, m, 3]  sigma' of i, f, o
    # d a / d c_k per gate z, i, f ([B, W, m, 3]) and d a_o / d y_k ([B, W, m])
    Ac = torch.stack([Gt[..., 0] * (1 - Z * Z), Z * dG[..., 0], CP * dG[..., 1]], dim=3)
    Ao = TC * dG[..., 2]  # [B, W, m]
    Oc = Gt[..., 2] * (1 - TC * TC)  # [B, W, m]  d y_k / d c_k
    deltas = [torch.empty(0)] * W
    dy = params.w  # [B, m]  d d_hat / d y_W
    dc = None  # [B, m]
    # recurrent rows of the gate matrix, transposed once: row-vector products are the fast kind
    RT = params.cell[:, p : p + m, :].transpose(1, 2).contiguous() if W > 1 else None  # [B, mG, m]
    for k in range(W - 1, -1, -1):
        dc = dy * Oc[:, k] if dc is None else dc + dy * Oc[:, k]  # [B, m]
        delta = torch.cat([dc.unsqueeze(2) * Ac[:, k], (dy * Ao[:, k]).unsqueeze(2)], dim=2).view(B, -1)  # [B, m*4]
        deltas[k] = delta
        if k > 0:
            assert RT is not None
            dy = torch.bmm(delta.unsqueeze(1), RT).squeeze(1)  # [B, m]  through u_k's y_{k-1} entries
            dc = dc * Gt[:, k, :, 1]
    U = torch.stack(us, dim=1) if W > 1 else us[0].unsqueeze(1)  # [B, W, q]
    Delta = torch.stack(deltas, dim=1) if W > 1 else deltas[0].unsqueeze(1)  # [B, W, m*4]
    return d_hat, U, Delta, phi, h_first
