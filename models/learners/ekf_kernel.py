"""The EKF's and the DEKF's innovation and step compiled, for waves of few rows: one call each.

Predict's Jacobian is one call of the window BPTT (`bptt_kernel.lstm_jacobian`); what is left around it is
bookkeeping, each part a torch call or a few whatever the size. Predict lays H out as blocks (the DEKF's
`NetSpec.blocks_of`, a copy) and takes each block's innovation; the step after it (predict's memo,
`models.learners.base`) makes the measurement update (`models.kalman.correct`), lays theta's step out from
the blocks, adds the random walk to every block, counts the tick and slides the window. Here each half is
one loop over rows (`models.jit`), in `models.kalman`'s symbols, per row, with e = d - d_hat:

    innovation:  PH = P H^T of each block,  S = R + sum over blocks of H P H^T      (H read in theta's order)
    step:        theta += PH e / S;   P -= a a^T, a = PH / sqrt(S), then P += q I;
                 t += 1;   xbuf <- [xbuf[1:], x];   h0 <- the state after the window's first input

The EKF is the case of one block in theta's own order (and the feed-forward net's, `mlp.MLPLearner`, that
of an EKF without a window); the DEKF's cell blocks hold neuron i's weights from input r to gate g at entry
r G + g, which is theta's column r (m G) + i G + g, and its head block follows the cell in theta. The
arithmetic is `kalman_kernel`'s, the additions torch's, so both agree with the torch path within float
rounding (tests/unit/test_kernels.py runs them side by side).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from models.jit import NP_FLOAT, Kernel, array, memory

# The loop serves waves of at most this many rows; beyond them torch's passes over [B, n] cost what the
# loop's would, and wide waves stay as they were.
MAX_ROWS = 64


def _step_rows(Pc, PHc, Ph, PHh, G, e, S, q, theta, t, xbuf, x, h0, h_first):  # pragma: no cover - compiled
    """Pc [B, inner, n, n] and Ph [B, nh, nh] in place, with their P H^T PHc [B, inner, n] and PHh [B, nh]; entry l
    of cell block i is theta's column (l // G) (inner G) + i G + l % G, the head's follow from column inner n.
    theta [B, n_theta], t [B] int64, xbuf [B, W-1, p], h0 [B, S] in place; e, S, q [B]; x [B, p]; h_first [B, S]."""
    B, inner, n = PHc.shape
    nh = PHh.shape[1]
    n_cell = inner * n
    row = inner * G
    a = np.empty(max(n, nh), PHc.dtype)
    for b in range(B):
        g = e[b] / S[b]
        r = math.sqrt(S[b])
        qb = q[b]
        for i in range(inner):
            for j in range(n):
                theta[b, (j // G) * row + i * G + j % G] += PHc[b, i, j] * g
                a[j] = PHc[b, i, j] / r
            for j in range(n):
                aj = a[j]
                for k in range(n):
                    Pc[b, i, j, k] -= aj * a[k]
                Pc[b, i, j, j] += qb
        for j in range(nh):
            theta[b, n_cell + j] += PHh[b, j] * g
            a[j] = PHh[b, j] / r
        for j in range(nh):
            aj = a[j]
            for k in range(nh):
                Ph[b, j, k] -= aj * a[k]
            Ph[b, j, j] += qb
        t[b] += 1
        W1 = xbuf.shape[1]
        for w in range(W1 - 1):
            for c in range(xbuf.shape[2]):
                xbuf[b, w, c] = xbuf[b, w + 1, c]
        if W1 > 0:
            for c in range(xbuf.shape[2]):
                xbuf[b, W1 - 1, c] = x[b, c]
        for c in range(h0.shape[1]):
            h0[b, c] = h_first[b, c]


def _warm_up(dtype: torch.dtype) -> None:
    """Run both loops once for this float width, on one row of a one-weight filter with a head of one."""
    z, one = np.zeros, np.ones
    dt = NP_FLOAT[dtype]
    INNOVATION.compiled()(one((1, 1, 1, 1), dt), one((1, 1, 1), dt), one((1, 2), dt), 1, one(1, dt),
                          z((1, 1, 1), dt), z((1, 1), dt), z(1, dt))
    KERNEL.compiled()(one((1, 1, 1, 1), dt), one((1, 1, 1), dt), one((1, 1, 1), dt), one((1, 1), dt), 1,
                      one(1, dt), one(1, dt), one(1, dt), z((1, 2), dt), z(1, np.int64), z((1, 1, 1), dt),
                      one((1, 1), dt), z((1, 2), dt), one((1, 2), dt))


def _innovation_rows(Pc, Ph, H, G, R, PHc, PHh, S):  # pragma: no cover - compiled
    """`kalman_kernel`'s innovation of the cell blocks Pc [B, inner, n, n] and the head block Ph [B, nh, nh] at once,
    reading H [B, n_theta] in theta's order (the cell block's entry mapped as in `_step_rows`); writes PHc
    [B, inner, n], PHh [B, nh] and S [B] = R + the cell blocks' sum + the head's, the sums in its order."""
    B, inner, n = PHc.shape
    nh = PHh.shape[1]
    n_cell = inner * n
    row = inner * G
    for b in range(B):
        s = 0.0
        for i in range(inner):
            for k in range(n):
                PHc[b, i, k] = 0.0
            for j in range(n):  # row-major: H_j times row j of P
                h = H[b, (j // G) * row + i * G + j % G]
                for k in range(n):
                    PHc[b, i, k] += h * Pc[b, i, j, k]
            for k in range(n):
                s += H[b, (k // G) * row + i * G + k % G] * PHc[b, i, k]
        S[b] = R[b] + s
        if nh > 0:
            s = 0.0
            for k in range(nh):
                PHh[b, k] = 0.0
            for j in range(nh):
                h = H[b, n_cell + j]
                for k in range(nh):
                    PHh[b, k] += h * Ph[b, j, k]
            for k in range(nh):
                s += H[b, n_cell + k] * PHh[b, k]
            S[b] += s


KERNEL = Kernel(_step_rows, _warm_up, "EKF step")
INNOVATION = Kernel(_innovation_rows, _warm_up, "EKF step")
KERNELS = (KERNEL, INNOVATION)


def innovation(Pc: torch.Tensor, Ph: torch.Tensor | None, H: torch.Tensor, G: int, R: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The loop: (P H^T of the cell blocks [B, inner, n], of the head block [B, nh] or None, S [B]) from the blocks
    as `step` takes them and H [B, n_theta] in theta's order (`serves` has checked them)."""
    B, inner, n = Pc.shape[:3]
    dt = NP_FLOAT[H.dtype]
    PHc, S = np.empty((B, inner, n), dt), np.empty(B, dt)
    PHh = np.empty((B, 0 if Ph is None else Ph.shape[1]), dt)
    INNOVATION.compiled()(memory(Pc), np.empty((B, 0, 0), dt) if Ph is None else memory(Ph), array(H), G, array(R),
                          PHc, PHh, S)
    return torch.from_numpy(PHc), None if Ph is None else torch.from_numpy(PHh), torch.from_numpy(S)


def serves(states: list[torch.Tensor], dtype: torch.dtype, inputs: tuple[torch.Tensor, ...] = (),
           most: float = math.inf) -> bool:
    """Whether a loop on these state tensors (written or read in place) and inputs serves: a wave of at most MAX_ROWS
    rows and `most` entries of state, the state laid out flat, everything of the filter's float width (the tick
    counter aside), nothing for autograd, and the loops compiled here."""
    if states[0].shape[0] > MAX_ROWS:
        return False
    work = 0  # plain loops: this is asked twice a wave of each filter, where a generator's cost shows
    for v in states:
        if not v.is_contiguous() or v.requires_grad or (v.dtype != dtype and v.dtype != torch.int64):
            return False
        work += v.numel()
    if work > most:
        return False
    for v in inputs:
        if v.dtype != dtype or v.requires_grad:
            return False
    return KERNEL.usable(dtype) and INNOVATION.usable(dtype)


def step(cell: tuple[torch.Tensor, torch.Tensor], head: tuple[torch.Tensor, torch.Tensor] | None, G: int,
         e: torch.Tensor, S: torch.Tensor, q: torch.Tensor, theta: torch.Tensor, t: torch.Tensor,
         window: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
    """The loop: `cell` is (P [B, inner, n, n], P H^T [B, inner, n]) of the cell's blocks (the EKF's one block of
    every weight: inner 1, G = n), `head` the same of a head block [B, nh, nh], [B, nh] or None; `window` is
    (xbuf, x, h0, h_first) of a recurrent net's, None for a net without one (the feed-forward net's). P, theta, t,
    xbuf and h0 are written in place (`serves` has checked them)."""
    B = theta.shape[0]
    dt = NP_FLOAT[theta.dtype]
    Pc, PHc = cell
    Ph, PHh = (memory(head[0]), array(head[1])) if head is not None else (np.empty((B, 0, 0), dt), np.empty((B, 0), dt))
    if window is None:
        xbuf, x, h0, h_first = np.empty((B, 0, 0), dt), np.empty((B, 0), dt), np.empty((B, 0), dt), np.empty((B, 0), dt)
    else:
        xbuf, x, h0, h_first = memory(window[0]), array(window[1]), memory(window[2]), array(window[3])
    KERNEL.compiled()(memory(Pc), array(PHc), Ph, PHh, G, array(e), array(S), array(q), memory(theta), memory(t),
                      xbuf, x, h0, h_first)
