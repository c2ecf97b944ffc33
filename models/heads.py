"""The three final-estimate architectures (Ergen & Kozat 2018, Sec. II; see PAPER-NOTES 1.3).

    plain :  d_hat = w^T y_t + b0
    skip  :  d_hat = w^T y_t + b0 + v^T x_t                      ungated direct (ARMA-like) path
    gated :  d_hat = w^T y_t + b0 + v^T (alpha_t * x_t)
             alpha_t = sigmoid(W_a x_t + R_a y_{t-1} + b_a)      scalar (R) or vector (R^p)

b0 is an output bias the paper does not write; it costs one parameter and lets a key whose
normaliser has not settled yet fit its level. In every head the estimate is linear in the
read-out r = [w; b0; v] given the features phi = [y_t; 1; alpha_t * x_t], which is what the
Rao-Blackwellised particle filter exploits (a Kalman filter over r per particle).
theta's head part is laid out [r (n_readout) | gate weights (q x n_alpha, input-major)].
"""

from __future__ import annotations

import torch

from models.cells import NetSpec, Params


def readout_features(
    spec: NetSpec, params: Params, y: torch.Tensor, y_prev: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """phi [B, n_readout] such that d_hat = r . phi. y, y_prev [B, m], x [B, p]."""
    ones = y.new_ones(y.shape[0], 1)  # [B, 1]
    if spec.head == "plain":
        return torch.cat([y, ones], dim=1)
    if spec.head == "skip":
        return torch.cat([y, ones, x], dim=1)
    assert params.gate is not None
    u = torch.cat([x, y_prev, ones], dim=1)  # [B, q]
    alpha = torch.sigmoid(torch.bmm(u.unsqueeze(1), params.gate).squeeze(1))  # [B, n_alpha]
    return torch.cat([y, ones, alpha * x], dim=1)  # scalar alpha broadcasts over p


def estimate(spec: NetSpec, params: Params, y: torch.Tensor, y_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d_hat [B]."""
    phi = readout_features(spec, params, y, y_prev, x)  # [B, n_readout]
    return (params.r * phi).sum(dim=1)
