"""The one Kalman measurement update every filter here uses (EKF, DEKF, the PF's read-out, RLS).

A scalar observation of a state split into independent blocks (Puskorius & Feldkamp's decoupling;
one block is the textbook filter, filterpy's `KalmanFilter.update` with a row H):

    d = sum_b H_b x_b + eps,  eps ~ N(0, R)          x_b ~ N(m_b, P_b), blocks uncorrelated

    S    = sum_b H_b P_b H_b^T + R                   innovation variance (shared by every block)
    K_b  = P_b H_b^T / S                             gain of block b
    m_b += K_b e,  e = d - d_hat                     the step each filter applies to its own state
    P_b -= K_b S K_b^T   (= (P_b H_b^T)(P_b H_b^T)^T / S, written as one rank-1 update in place)

Shapes: a block's covariance P [*batch, *inner, n, n] and its H [*batch, *inner, n]; e, R and S
have the batch shape only ([B] for a series' filter, [B, N] for particles), and S sums H P H^T
over the block's inner dims (the DEKF's neurons) as well. The time update (random walk
P += q I, RLS's forgetting P /= lam) is the caller's: the filters differ there, not here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models import kalman_kernel

Block = tuple[torch.Tensor, torch.Tensor]  # (P [*batch, *inner, n, n], H [*batch, *inner, n])


def innovation(blocks: Sequence[Block], R: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(P_b H_b^T for each block [*batch, *inner, n], S [*batch]): the predictive variance of d.

    P_b is a covariance, symmetric, so P_b H_b^T is taken as (H_b P_b)^T: on CPU a batch of row
    vectors times matrices is the fast product, a batch of matrices times column vectors the slow
    one (the DEKF's 16 blocks of 84 for one series: 4-5x; `benchmarks/speed.py`'s last table). A wave of
    few rows takes the same sums compiled, one call a block (`models.kalman_kernel`)."""
    if kalman_kernel.serves([P for P, _ in blocks], [H for _, H in blocks], R, kalman_kernel.MAX_WORK):
        return kalman_kernel.innovation(list(blocks), R)
    PH = [torch.matmul(H.unsqueeze(-2), P).squeeze(-2) for P, H in blocks]  # [*batch, *inner, n]
    S = R
    for (_, H), ph in zip(blocks, PH, strict=True):
        S = S + (H * ph).reshape(*R.shape, -1).sum(dim=-1)  # [*batch]
    return PH, S


def correct(Ps: Sequence[torch.Tensor], PH: Sequence[torch.Tensor], e: torch.Tensor, S: torch.Tensor,
            joseph: bool = False) -> list[torch.Tensor]:
    """The measurement update given `innovation`'s (PH, S): each P_b in place, and the step K_b e of each
    block's mean [*batch, *inner, n].

    `joseph`: P - K (PH)^T - (PH) K^T + S K K^T, symmetrised (the same value in exact arithmetic;
    it keeps P symmetric under round-off where the rank-1 form can drift). The rank-1 form is
    compiled (`models.kalman_kernel`): torch's batched product of inner dimension 1 is the slow way."""
    if not joseph and kalman_kernel.serves(list(Ps), [*PH, S], e):
        return kalman_kernel.correct(list(Ps), list(PH), e, S)
    steps = []
    lead = e.dim()
    for P, ph in zip(Ps, PH, strict=True):
        n = ph.shape[-1]
        shape = (*e.shape, *([1] * (ph.dim() - lead)))  # e, S broadcast over the block's inner dims and n
        steps.append(ph * (e / S).view(shape))  # [*batch, *inner, n]  K e
        flat = P.view(-1, n, n)
        if joseph:
            Sx = S.view(shape[:-1]).expand(ph.shape[:-1]).reshape(-1, 1, 1)  # [*, 1, 1]
            K = (ph / S.view(shape)).reshape(-1, n, 1)  # [*, n, 1]
            KPH = K * ph.reshape(-1, 1, n)  # [*, n, n]  K (P H^T)^T
            upd = flat - KPH - KPH.transpose(1, 2) + Sx * K * K.transpose(1, 2)
            flat.copy_(0.5 * (upd + upd.transpose(1, 2)))
        else:
            a = (ph / S.sqrt().view(shape)).reshape(-1, n, 1)  # [*, n, 1]  a a^T = K S K^T
            flat.baddbmm_(a, a.transpose(1, 2), alpha=-1.0)  # in place: P is the largest tensor a filter has
    return steps


def update(blocks: Sequence[Block], e: torch.Tensor, R: torch.Tensor,
           joseph: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`innovation` then `correct`: (the step of each block's mean, S [*batch]); the P_b change in place."""
    PH, S = innovation(blocks, R)
    return correct([P for P, _ in blocks], PH, e, S, joseph), S


def add_diagonal(P: torch.Tensor, q: torch.Tensor | float) -> None:
    """The random-walk time update P += q I in place; q a float or one value per batch row [*batch]."""
    diag = P.diagonal(dim1=-2, dim2=-1)  # [*batch, *inner, n]
    if isinstance(q, torch.Tensor):
        q = q.view(*q.shape, *([1] * (diag.dim() - q.dim())))
    diag.add_(q)
