"""The Kalman measurement update (`models.kalman`) compiled, for waves of few rows.

A one-key wave of the default learner makes four filter updates (the DEKF's, the EKF's, the
feed-forward net's and RLS's), each about ten torch calls in `innovation` and `correct` whatever
the size of P: a fifth of that wave. Here each half is one compiled loop over rows, blocks and
units (`models.jit`), in `models.kalman`'s symbols, a block's covariance P [n, n] and its row H [n]:

    innovation:  PH_k = sum_j H_j P_jk            S = R + sum_blocks sum_k H_k PH_k
    correct:     step_j = PH_j e / S              P_jk -= a_j a_k,  a = PH / sqrt(S)

Every array is a block's rows flattened to [rows, inner, ...]: rows are the batch of e, S and R
(keys, or keys x particles), inner the block's own repeats (the DEKF's neurons), summed into S.
It agrees with the torch path within float rounding (products summed in another order); unit
tests check that for one and two blocks, with inner repeats, at both float widths, and that a
non-finite row stays non-finite while its neighbours are untouched.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from models.jit import Kernel, array, memory

# `innovation` takes its loop while the covariances hold at most this many entries (rows x inner x n^2 summed
# over the blocks): 16 keys of the default ensemble's EKF (n=271 at 4 lags), 115 of its feed-forward net
# (n=101). Beyond it torch's batched product on several threads can win (benchmarks/speed.py, the "Kalman
# update" rows of its compiled-loops table). `correct` takes its loop at every width: with torch's rank-1 update (a
# batched product of inner dimension 1) the whole update was 1.4-4x slower at every size that table measured.
MAX_WORK = 16 * 271 * 271


def _innovation_rows(P, H, PH, S):  # pragma: no cover - compiled
    """One block: P [rows, inner, n, n], H [rows, inner, n]; writes PH [rows, inner, n], adds sum H PH into S [rows]."""
    rows, inner, n = H.shape
    for b in range(rows):
        s = 0.0
        for i in range(inner):
            for k in range(n):
                PH[b, i, k] = 0.0
            for j in range(n):  # row-major: H_j times row j of P
                h = H[b, i, j]
                for k in range(n):
                    PH[b, i, k] += h * P[b, i, j, k]
            for k in range(n):
                s += H[b, i, k] * PH[b, i, k]
        S[b] += s


def _correct_rows(P, PH, e, S, step):  # pragma: no cover - compiled
    """One block: P [rows, inner, n, n] in place (P -= a a^T, a = PH / sqrt(S)), step [rows, inner, n] = PH e / S."""
    rows, inner, n = PH.shape
    a = np.empty(n, PH.dtype)
    for b in range(rows):
        g = e[b] / S[b]
        r = math.sqrt(S[b])
        for i in range(inner):
            for j in range(n):
                step[b, i, j] = PH[b, i, j] * g
                a[j] = PH[b, i, j] / r
            for j in range(n):
                aj = a[j]
                for k in range(n):
                    P[b, i, j, k] -= aj * a[k]


def _warm_up(dtype: torch.dtype) -> None:
    """Run both loops once for this float width, on one row of a 2x2 filter (compiling or loading them)."""
    P, ones = torch.eye(2, dtype=dtype).unsqueeze(0), torch.ones(1, 2, dtype=dtype)
    PH, S = innovation([(P, ones)], ones[:, 0])
    correct([P], PH, torch.ones(1, dtype=dtype), S)


INNOVATION = Kernel(_innovation_rows, _warm_up, "Kalman update")
CORRECT = Kernel(_correct_rows, _warm_up, "Kalman update")
KERNELS = (INNOVATION, CORRECT)


def serves(Ps: list[torch.Tensor], others: list[torch.Tensor], batch: torch.Tensor, most: float = math.inf) -> bool:
    """Whether a filter update of covariances Ps (and the other tensors it reads) takes the loops: at most
    `most` entries of P, one float width, each P laid out flat (it is written in place), nothing autograd is
    to differentiate through, and the loops compiled here. `batch` is e, S or R, whose shape is the rows'."""
    dtype = batch.dtype
    if not batch.numel() or not all(k.usable(dtype) for k in KERNELS):
        return False
    work = 0
    for P in Ps:
        if P.dtype != dtype or not P.is_contiguous():
            return False
        work += P.numel()
    if work > most:
        return False
    for t in others:
        if t.dtype != dtype:
            return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (*Ps, *others, batch)))


def innovation(blocks: list[tuple[torch.Tensor, torch.Tensor]], R: torch.Tensor
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`models.kalman.innovation`, compiled: (P_b H_b^T [*batch, *inner, n] each, S [*batch])."""
    rows = R.numel()
    S = memory(R).copy()  # [*batch]  from R, the blocks' sums added
    s = S.reshape(rows)
    PH = []
    loop = INNOVATION.compiled()
    for P, H in blocks:
        n = H.shape[-1]
        h = array(H)
        ph = np.empty(h.shape, h.dtype)  # [*batch, *inner, n]
        loop(memory(P).reshape(rows, -1, n, n), h.reshape(rows, -1, n), ph.reshape(rows, -1, n), s)
        PH.append(torch.from_numpy(ph))
    return PH, torch.from_numpy(S)


def correct(Ps: list[torch.Tensor], PH: list[torch.Tensor], e: torch.Tensor, S: torch.Tensor) -> list[torch.Tensor]:
    """`models.kalman.correct` (the rank-1 form), compiled: each P_b in place, and each block's step K_b e."""
    rows = e.numel()
    ea, sa = array(e).reshape(rows), array(S).reshape(rows)
    steps = []
    loop = CORRECT.compiled()
    for P, ph in zip(Ps, PH, strict=True):
        n = ph.shape[-1]
        pha = array(ph)
        step = np.empty(pha.shape, pha.dtype)  # [*batch, *inner, n]
        loop(memory(P).reshape(rows, -1, n, n), pha.reshape(rows, -1, n), ea, sa, step.reshape(rows, -1, n))
        steps.append(torch.from_numpy(step))
    return steps
