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

from models.cells import NetSpec, Params, cell_step, lstm_gates, split_state, unpack, unpack_parts
from models.heads import estimate, readout_features
from models.learners import bptt_kernel
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


def _takes_kernel(spec: NetSpec, weights: tuple[torch.Tensor, ...], h0: torch.Tensor, xbuf: torch.Tensor,
                  x: torch.Tensor) -> bool:
    """Whether `lstm_bptt` takes `bptt_kernel`: few rows, and nothing that autograd is to differentiate through
    (the kernel is opaque)."""
    return x.shape[0] <= bptt_kernel.most_rows(spec.hidden, xbuf.shape[1] + 1) and not (
        torch.is_grad_enabled() and any(t.requires_grad for t in (*weights, h0, xbuf, x))
    ) and bptt_kernel.usable(x.dtype)


def lstm_jacobian(spec: NetSpec, theta: torch.Tensor, h0: torch.Tensor, xbuf: torch.Tensor, x: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d_hat [B], H [B, n_theta], state after the window's first input [B, 2m]): `lstm_bptt` then `bptt_jacobian`,
    for a small wave in the kernel's one call."""
    if _takes_kernel(spec, (theta,), h0, xbuf, x):
        return bptt_kernel.lstm_jacobian(spec.hidden, spec.head == "skip", (theta, 0), (theta, spec.n_cell), h0, xbuf,
                                         x)
    d_hat, U, Delta, phi, h_first = lstm_bptt(spec, theta, h0, xbuf, x, compiled=False)
    return d_hat, bptt_jacobian(U, Delta, phi), h_first


def bptt_jacobian(U: torch.Tensor, Delta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """H = [H_cell, phi] [B, n_theta] from `lstm_bptt`'s U [B, W, q], Delta [B, W, m*G], phi [B, n_readout]:
    H_cell = sum_k u_k (x) delta_k, laid out as the cell weights [q, m*G]."""
    Hc = torch.bmm(U.transpose(1, 2), Delta).reshape(U.shape[0], -1)  # [B, n_cell]
    return torch.cat([Hc, phi], dim=1)


def window_advance(state: State, x: torch.Tensor, h_first: torch.Tensor) -> None:
    """Slide the window by one tick, in place."""
    if state["xbuf"].shape[1] > 0:
        state["xbuf"] = torch.cat([state["xbuf"][:, 1:], x.unsqueeze(1)], dim=1)
    state["h0"] = h_first


def has_closed_form(spec: NetSpec) -> bool:
    """Whether `lstm_bptt` applies: an LSTM cell and a head linear in x (plain or skip)."""
    return spec.cell == "lstm" and spec.head in ("plain", "skip")


def lstm_bptt(
    spec: NetSpec, theta: torch.Tensor | Params, h0: torch.Tensor, xbuf: torch.Tensor, x: torch.Tensor,
    compiled: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated BPTT over the window in closed form (no autograd), for the LSTM.

    Forward over u_k = [x_k; y_{k-1}; 1], k = 1..W, keeping the gates; then, from dy_W = w,

        do_k = dy_k * tanh(c_k)                     dc_k += dy_k * o_k * (1 - tanh(c_k)^2)
        delta_k = [dc_k i_k (1 - z_k^2), dc_k z_k i_k (1 - i_k), dc_k c_{k-1} f_k (1 - f_k), do_k o_k (1 - o_k)]
        dy_{k-1} = (cell delta_k)[p : p+m]          dc_{k-1} = dc_k * f_k

    so H_cell = sum_k u_k (x) delta_k (one batched product) and H_head = phi. Window 1 is the
    paper's instantaneous gradient. Returns (d_hat [B], U [B, W, q], Delta [B, W, m*G],
    phi [B, n_readout], state after the first input [B, 2m]); H_cell = U^T Delta.

    For few keys the number of torch calls is the cost (1-3 us each, whatever the size): a small wave
    (`bptt_kernel.most_rows`: 48 rows at m=16 and window 10) takes the same recursion compiled, in one
    call (`models.learners.bptt_kernel`; `compiled` forces one way or the other). The torch pass below
    writes the steps in as few calls as the recursion allows: the forward step is `lstm_gates`, the local
    derivatives of every step come in one pass after the loop, and the backward recursion is a few calls
    a step.
    """
    m, p = spec.hidden, spec.n_in
    if compiled is None:
        compiled = _takes_kernel(spec, (theta.cell, theta.r) if isinstance(theta, Params) else (theta,), h0, xbuf, x)
    if compiled:
        if isinstance(theta, Params):  # the particle filter's: its cell and head tensors, [B, n_cell] and [B, nr]
            weights_at = (theta.cell.reshape(x.shape[0], -1), 0), (theta.r, 0)
        else:
            weights_at = (theta, 0), (theta, spec.n_cell)
        return bptt_kernel.lstm_bptt(m, spec.head == "skip", *weights_at, h0, xbuf, x)
    params = theta if isinstance(theta, Params) else unpack(spec, theta)
    xs = torch.cat([xbuf, x.unsqueeze(1)], dim=1) if xbuf.shape[1] else x.unsqueeze(1)  # [B, W, p]
    B, W = xs.shape[0], xs.shape[1]
    cell = params.cell  # [B, q, m*4]
    ones = x.new_ones(B, 1)
    c, y = h0[:, :m], h0[:, m:]  # [B, m] each
    us, cs, ss, zs, tcs = [], [c], [], [], []  # u_k, c_{k-1} and step k's activations
    h_first = h0
    for k, xk in enumerate(xs.unbind(1)):  # xk [B, p]
        u = torch.cat([xk, y, ones], dim=1)  # [B, q]  as `lstm_preactivation`'s, so the forward agrees to the bit
        a = torch.bmm(u.unsqueeze(1), cell).view(B, m, 4)  # [B, m, 4] pre-activations z, i, f, o
        s, z, c, tc, y = lstm_gates(a, c)  # [B, m, 4], then [B, m] each
        us.append(u)
        ss.append(s)
        zs.append(z)
        tcs.append(tc)
        cs.append(c)
        if k == 0:
            h_first = torch.cat([c, y], dim=1)  # [B, 2m]
    y_prev = h0[:, m:] if W == 1 else us[-1][:, p : p + m]  # y_{W-1}
    phi = readout_features(spec, params, y, y_prev, x)  # [B, nr]
    d_hat = (params.r * phi).sum(dim=1)  # [B]
    # The local derivatives of every step at once (elementwise in the stored activations).
    S = torch.stack(ss, dim=1)  # [B, W, m, 4]
    Z = torch.stack(zs, dim=1)  # [B, W, m]
    TC = torch.stack(tcs, dim=1)  # [B, W, m]
    CP = torch.stack(cs[:-1], dim=1)  # [B, W, m]  c_{k-1}
    dS = S * (1 - S)  # [B, W, m, 4]  sigma' of i, f, o in columns 1-3
    _, I, F, O = S.unbind(3)  # [B, W, m] each
    # d a / d c_k for the gates z, i, f, and d a_o / d y_k: [B, W, m, 4];
    # each step's delta is this times [dc, dc, dc, dy]
    A = torch.stack([I * (1 - Z * Z), Z * dS[..., 1], CP * dS[..., 2], TC * dS[..., 3]], dim=3)
    Oc = O * (1 - TC * TC)  # [B, W, m]  d y_k / d c_k
    A_k, Oc_k, F_k = A.unbind(1), Oc.unbind(1), F.unbind(1)  # per step: [B, m, 4], [B, m], [B, m]
    deltas = [torch.empty(0)] * W
    dy = params.w  # [B, m]  d d_hat / d y_W
    dc = None  # [B, m]
    # recurrent rows of the gate matrix, transposed once: row-vector products are the fast kind
    RT = cell[:, p : p + m].transpose(1, 2).contiguous() if W > 1 else None  # [B, m*4, m]
    for k in range(W - 1, -1, -1):
        dc = dy * Oc_k[k] if dc is None else dc + dy * Oc_k[k]  # [B, m]
        delta = A_k[k] * torch.stack([dc, dc, dc, dy], dim=2)  # [B, m, 4]
        deltas[k] = delta
        if k > 0:
            assert RT is not None
            dy = torch.bmm(delta.view(B, 1, -1), RT).view(B, m)  # [B, m]  through u_k's y_{k-1} entries
            dc = dc * F_k[k]
    U = torch.stack(us, dim=1)  # [B, W, q]
    Delta = torch.stack(deltas, dim=1).view(B, W, -1)  # [B, W, m*4]
    return d_hat, U, Delta, phi, h_first
