"""The SGD learner's default step (`sgd.SGDLearner`, closed-form gradient, Adam) compiled, for waves of few rows.

After the window BPTT, SGD's step is about forty torch calls on [B] and [B, n] tensors: the
gradient's norm and clip, the ascent direction laid out as theta, Adam's moments and step, the
read-out's NLMS step and its variable size, the running error variance. For a few keys each call's
cost is the wave's, so a small wave takes this one loop over rows and weights instead (`models.jit`).
In the learner's symbols, per row, with H = [sum_k u_k (x) delta_k, phi] and e = d - d_hat:

    g     = e H min(1, clip / (|e| |H|))                 the ascent direction, clipped in norm
    m1    = b1 m1 + (1 - b1) g      m2 = b2 m2 + (1 - b2) g^2
    theta += lr / (1 - b1^k) m1 / (sqrt(m2) / sqrt(1 - b2^k) + eps)      k = t + 1
    r     += mu e' phi / (1 + |phi|^2)   (the read-out, in place of Adam's step where head_step > 0)

mu is the read-out's step, fixed or moved by the errors' lag-1 correlation (`SGDLearner._head_step`).
It agrees with the torch path within float rounding; unit tests check the two side by side over many
ticks, at both float widths, with and without the variable step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from models.jit import NP_FLOAT, Kernel, array, memory

# A wave takes the loop while rows x weights is at most this: 48 keys of the default SGD at 4 lags (1,365
# weights). Beyond it torch's vectorised and threaded passes over [B, n] win (benchmarks/speed.py).
MAX_WORK = 48 * 1365


def _adam_rows(theta, m1, m2, U, Delta, phi, d_hat, d, t, e_prev, e_corr, e_sq, r2, cfg, flags, n_read):  # noqa: E501  # pragma: no cover
    """One row b at a time, every state array written in place: theta, m1, m2 [B, n]; e_prev, e_corr, e_sq, r2 [B].
    U [B, W, q], Delta [B, W, G], phi [B, nr]; d_hat, d [B]; t [B] the ticks seen (float). cfg: lr, tau, clip,
    b1, b2, eps, head_step, head_step_max, var_decay; flags: inverse schedule, head step on, variable step;
    n_read: the read-out's weights, after the cell's."""
    B, n = theta.shape
    W, q = U.shape[1], U.shape[2]
    G = Delta.shape[2]
    nr = phi.shape[1]
    n_cell = q * G
    lr0, tau, clip, b1, b2, eps = cfg[0], cfg[1], cfg[2], cfg[3], cfg[4], cfg[5]
    hs0, hs_max, vd = cfg[6], cfg[7], cfg[8]
    inverse, head_on, variable = flags[0], flags[1], flags[2]
    g = np.empty(n, theta.dtype)
    for b in range(B):
        e = d[b] - d_hat[b]
        for i in range(q):  # H_cell = sum_k u_k (x) delta_k, laid out as the cell weights [q, G]
            for j in range(G):
                acc = 0.0
                for k in range(W):
                    acc += U[b, k, i] * Delta[b, k, j]
                g[i * G + j] = acc
        h2 = 0.0
        for j in range(n_cell):
            h2 += g[j] * g[j]
        phi2 = 0.0
        for j in range(nr):
            g[n_cell + j] = phi[b, j]
            phi2 += phi[b, j] * phi[b, j]
        h_norm = math.sqrt(h2 + phi2)
        scale = e * min(clip / (abs(e) * h_norm + 1e-12), 1.0)
        for j in range(n):
            g[j] *= scale
        lr = lr0 / (1.0 + t[b] / tau) if inverse else lr0
        mu = hs0
        if variable:
            e_corr[b] = (1 - vd) * e_corr[b] + vd * e * e_prev[b]
            e_sq[b] = (1 - vd) * e_sq[b] + vd * e * e
            e_prev[b] = e
            rho = min(max(e_corr[b] / max(e_sq[b], 1e-12), 0.0), 1.0)
            mu = hs0 + (hs_max - hs0) * rho
        k = t[b] + 1.0
        step = lr / (1.0 - b1**k)
        root = math.sqrt(1.0 - b2**k)
        for j in range(n):
            m1[b, j] = b1 * m1[b, j] + (1.0 - b1) * g[j]
            m2[b, j] = b2 * m2[b, j] + (1.0 - b2) * g[j] * g[j]
        for j in range(n):
            if head_on and n_cell <= j < n_cell + n_read:  # the read-out: NLMS in place of Adam
                theta[b, j] += g[j] * (mu / (1.0 + phi2))
            else:
                theta[b, j] += m1[b, j] * step / (math.sqrt(m2[b, j]) / root + eps)
        r2[b] = (1 - vd) * r2[b] + vd * e * e


def _warm_up(dtype: torch.dtype) -> None:
    """Run the loop once for this float width, on one row of a 2-weight net (compiling or loading it)."""
    z, dt = np.zeros, NP_FLOAT[dtype]
    one = (z((1, 2), dt), z((1, 2), dt), z((1, 2), dt), z((1, 1, 1), dt), z((1, 1, 1), dt), z((1, 1), dt))
    vec = [z(1, dt) for _ in range(7)]
    KERNEL.compiled()(*one, *vec, np.zeros(9), np.zeros(3, np.bool_), 1)


KERNEL = Kernel(_adam_rows, _warm_up, "Adam step")


def step(theta: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, U: torch.Tensor, Delta: torch.Tensor,
         phi: torch.Tensor, d_hat: torch.Tensor, d: torch.Tensor, t: torch.Tensor, e_prev: torch.Tensor,
         e_corr: torch.Tensor, e_sq: torch.Tensor, r2: torch.Tensor, cfg: np.ndarray, flags: np.ndarray,
         n_read: int) -> None:
    """The loop on these tensors: the state ones (theta, m1, m2, e_prev, e_corr, e_sq, r2) written in place, so
    they must be laid out flat (`SGDLearner` checks); t is the ticks seen, int64."""
    KERNEL.compiled()(memory(theta), memory(m1), memory(m2), array(U), array(Delta), array(phi), array(d_hat),
                      array(d), t.numpy().astype(cfg.dtype), memory(e_prev), memory(e_corr), memory(e_sq), memory(r2),
                      cfg, flags, n_read)
