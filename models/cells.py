"""LSTM and GRU cells stepping a batch of independent series, each with its own weights.

Notation follows Ergen & Kozat (2018) / Greff et al.: input x_t in R^p, output y_t in R^m,
LSTM state c_t in R^m, sigma the logistic sigmoid, g = h = tanh, no peepholes.

    z_t = g(W_z x_t + R_z y_{t-1} + b_z)      block input
    i_t = s(W_i x_t + R_i y_{t-1} + b_i)      input gate
    f_t = s(W_f x_t + R_f y_{t-1} + b_f)      forget gate
    o_t = s(W_o x_t + R_o y_{t-1} + b_o)      output gate
    c_t = i_t * z_t + f_t * c_{t-1}
    y_t = o_t * h(c_t)

GRU (Cho et al. 2014), a drop-in replacement with state y_t only:

    u_t = s(W_u x_t + R_u y_{t-1} + b_u)      update gate
    r_t = s(W_r x_t + R_r y_{t-1} + b_r)      reset gate
    n_t = tanh(W_n x_t + R_n (r_t * y_{t-1}) + b_n)
    y_t = (1 - u_t) * y_{t-1} + u_t * n_t

The flat parameter vector theta (one row per series, or per particle) is laid out
*neuron-major*, so that the decoupled EKF's blocks are contiguous slices:

    theta = [ cell : m x G x q ,  head ]          q = p + m + 1, G = 4 (LSTM) or 3 (GRU)
    cell[j, g, :] = [ W_g[j, :] (p) | R_g[j, :] (m) | b_g[j] (1) ]   gate order z,i,f,o / u,r,n
    head          = see `models.heads`

so cell neuron j's incoming weights over all gates are theta[j*G*q : (j+1)*G*q].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

CellKind = Literal["lstm", "gru"]
HeadKind = Literal["plain", "skip", "gated"]
GateKind = Literal["scalar", "vector"]


@dataclass(frozen=True)
class NetSpec:
    """Shape of one regressor: cell, sizes and final-estimate architecture."""

    n_in: int  # p, regressor dimension
    hidden: int = 16  # m, cell output dimension
    cell: CellKind = "lstm"
    head: HeadKind = "skip"
    gate: GateKind = "scalar"  # for head="gated": alpha_t in R (scalar) or R^p (vector)

    def __post_init__(self) -> None:
        if self.n_in < 1 or self.hidden < 1:
            raise ValueError(f"n_in and hidden must be >= 1, got {self.n_in}, {self.hidden}")
        if self.cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be lstm or gru, got {self.cell!r}")
        if self.head not in ("plain", "skip", "gated"):
            raise ValueError(f"head must be plain, skip or gated, got {self.head!r}")
        if self.gate not in ("scalar", "vector"):
            raise ValueError(f"gate must be scalar or vector, got {self.gate!r}")

    @property
    def n_gates(self) -> int:
        return 4 if self.cell == "lstm" else 3

    @property
    def q(self) -> int:
        """Width of one gate row: [x, y_prev, 1]."""
        return self.n_in + self.hidden + 1

    @property
    def state_dim(self) -> int:
        """Recurrent state per series: [c; y] for LSTM, [y] for GRU."""
        return 2 * self.hidden if self.cell == "lstm" else self.hidden

    @property
    def n_cell(self) -> int:
        return self.hidden * self.n_gates * self.q

    @property
    def block_size(self) -> int:
        """Parameters feeding one cell neuron across all gates (a DEKF block)."""
        return self.n_gates * self.q

    @property
    def n_readout(self) -> int:
        """Parameters entering the estimate linearly: w (m), b0 (1) and v (p) if any."""
        return self.hidden + 1 + (self.n_in if self.head in ("skip", "gated") else 0)

    @property
    def n_alpha(self) -> int:
        """Rows of the control gate alpha_t (0 when there is no gate)."""
        if self.head != "gated":
            return 0
        return 1 if self.gate == "scalar" else self.n_in

    @property
    def n_gate_params(self) -> int:
        return self.n_alpha * self.q

    @property
    def n_head(self) -> int:
        return self.n_readout + self.n_gate_params

    @property
    def n_theta(self) -> int:
        return self.n_cell + self.n_head

    def describe(self) -> str:
        head = f"gated-{self.gate}" if self.head == "gated" else self.head
        return f"{self.cell}(m={self.hidden}, p={self.n_in}, head={head}, n_theta={self.n_theta})"


class Params(NamedTuple):
    """Views into theta [B, n_theta]; no copies."""

    cell: torch.Tensor  # [B, m*G, q]  row j*G+g = gate g of neuron j
    w: torch.Tensor  # [B, m]
    b0: torch.Tensor  # [B]
    v: torch.Tensor | None  # [B, p]
    gate: torch.Tensor | None  # [B, n_alpha, q]


def unpack(spec: NetSpec, theta: torch.Tensor) -> Params:
    """Split theta [B, n_theta] into named views."""
    B = theta.shape[0]
    m, p = spec.hidden, spec.n_in
    cell = theta[:, : spec.n_cell].reshape(B, m * spec.n_gates, spec.q)
    o = spec.n_cell
    w = theta[:, o : o + m]
    b0 = theta[:, o + m]
    o += m + 1
    v = None
    gate = None
    if spec.head in ("skip", "gated"):
        v = theta[:, o : o + p]
        o += p
    if spec.head == "gated":
        gate = theta[:, o : o + spec.n_gate_params].reshape(B, spec.n_alpha, spec.q)
    return Params(cell, w, b0, v, gate)


def pack(spec: NetSpec, params: Params) -> torch.Tensor:
    """Inverse of `unpack`: concatenate named parts into theta [B, n_theta]."""
    B = params.cell.shape[0]
    parts = [params.cell.reshape(B, -1), params.w, params.b0[:, None]]
    if params.v is not None:
        parts.append(params.v)
    if params.gate is not None:
        parts.append(params.gate.reshape(B, -1))
    theta = torch.cat(parts, dim=1)
    if theta.shape[1] != spec.n_theta:
        raise ValueError(f"packed {theta.shape[1]} parameters, spec wants {spec.n_theta}")
    return theta


def init_theta(spec: NetSpec, normals: torch.Tensor, scale: float = 0.1, gate_bias: float = 0.5) -> torch.Tensor:
    """Initial theta from N(0,1) draws [B, n_theta]: weights scale*N(0,1) (Vural et al.),
    forget-gate bias +gate_bias, input/output-gate biases -gate_bias (LSTM); GRU update gate
    bias -gate_bias so the state starts by remembering."""
    theta = scale * normals
    B = theta.shape[0]
    cell = theta[:, : spec.n_cell].view(B, spec.hidden, spec.n_gates, spec.q)
    if spec.cell == "lstm":
        cell[:, :, 1, -1] = -gate_bias  # input gate
        cell[:, :, 2, -1] = gate_bias  # forget gate
        cell[:, :, 3, -1] = -gate_bias  # output gate
    else:
        cell[:, :, 0, -1] = -gate_bias  # update gate
    return theta


def split_state(spec: NetSpec, h: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """State [B, S] -> (c [B, m] or None, y [B, m])."""
    if spec.cell == "lstm":
        return h[:, : spec.hidden], h[:, spec.hidden :]
    return None, h


def cell_step(spec: NetSpec, cell: torch.Tensor, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One step of B independent cells. cell [B, m*G, q], h [B, S], x [B, p] -> h' [B, S]."""
    B, m, G = x.shape[0], spec.hidden, spec.n_gates
    c_prev, y_prev = split_state(spec, h)  # [B, m] each
    if spec.cell == "lstm":
        u = torch.cat([x, y_prev, x.new_ones(B, 1)], dim=1)  # [B, q]
        a = torch.bmm(cell, u.unsqueeze(2)).view(B, m, G)  # [B, m, G] pre-activations
        z = torch.tanh(a[:, :, 0])  # [B, m]
        gates = torch.sigmoid(a[:, :, 1:])  # [B, m, 3]  i, f, o
        c = gates[:, :, 0] * z + gates[:, :, 1] * c_prev  # [B, m]
        y = gates[:, :, 2] * torch.tanh(c)  # [B, m]
        return torch.cat([c, y], dim=1)
    # GRU: the candidate sees r * y_prev, so input and recurrent parts are applied separately
    p = spec.n_in
    cg = cell.view(B, m, G, spec.q)
    ax = torch.einsum("bmgp,bp->bmg", cg[..., :p], x) + cg[..., -1]  # [B, m, G]
    ry = torch.einsum("bmgk,bk->bmg", cg[:, :, :2, p:-1], y_prev)  # [B, m, 2]
    ur = torch.sigmoid(ax[:, :, :2] + ry)  # [B, m, 2]  u, r
    n = torch.tanh(ax[:, :, 2] + torch.einsum("bmk,bk->bm", cg[:, :, 2, p:-1], ur[:, :, 1] * y_prev))  # [B, m]
    return (1 - ur[:, :, 0]) * y_prev + ur[:, :, 0] * n
