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
*input-major*, because a row vector times a [q, m*G] matrix is the fastest batched product
on CPU (7x a batched matrix-vector product at 1,000 series):

    theta = [ cell : q x m x G ,  head ]          q = p + m + 1, G = 4 (LSTM) or 3 (GRU)
    cell[k, j, g] = weight from input k of u = [x_t; y_{t-1}; 1] to gate g of neuron j
                    gate order z, i, f, o (LSTM) / u, r, n (GRU)
    head          = see `models.heads`

so W_g[j, k] = cell[k, j, g] for k < p, R_g[j, k'] = cell[p + k', j, g], b_g[j] = cell[q-1, j, g].
The decoupled EKF's block for neuron j is cell[:, j, :] (q x G entries), gathered with
`NetSpec.blocks_of`.
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

    def blocks_of(self, cell_flat: torch.Tensor) -> torch.Tensor:
        """Cell part [B, n_cell] -> per-neuron blocks [B, m, q*G] (a copy), DEKF order."""
        B = cell_flat.shape[0]
        v = cell_flat.reshape(B, self.q, self.hidden, self.n_gates)
        return v.permute(0, 2, 1, 3).reshape(B, self.hidden, self.block_size)

    def cell_of(self, blocks: torch.Tensor) -> torch.Tensor:
        """Inverse of `blocks_of`: [B, m, q*G] -> [B, n_cell]."""
        B = blocks.shape[0]
        v = blocks.reshape(B, self.hidden, self.q, self.n_gates)
        return v.permute(0, 2, 1, 3).reshape(B, self.n_cell)

    def describe(self) -> str:
        head = f"gated-{self.gate}" if self.head == "gated" else self.head
        return f"{self.cell}(m={self.hidden}, p={self.n_in}, head={head}, n_theta={self.n_theta})"


class Params(NamedTuple):
    """Views into theta [B, n_theta]; no copies."""

    cell: torch.Tensor  # [B, q, m*G]  column j*G+g = gate g of neuron j
    r: torch.Tensor  # [B, n_readout]  the read-out [w; b0; v]
    w: torch.Tensor  # [B, m]
    b0: torch.Tensor  # [B]
    v: torch.Tensor | None  # [B, p]
    gate: torch.Tensor | None  # [B, n_alpha, q]


def unpack(spec: NetSpec, theta: torch.Tensor) -> Params:
    """Split theta [B, n_theta] into named views."""
    return unpack_parts(spec, theta[:, : spec.n_cell], theta[:, spec.n_cell :])


def unpack_parts(spec: NetSpec, cell_flat: torch.Tensor, head: torch.Tensor) -> Params:
    """Named views of theta given as its cell part [B, n_cell] and head part [B, n_head].

    Autograd through separate leaves avoids the full-size zero gradient a slice of one leaf makes."""
    B = cell_flat.shape[0]
    m, nr = spec.hidden, spec.n_readout
    cell = cell_flat.reshape(B, spec.q, m * spec.n_gates)
    r = head[:, :nr]
    v = r[:, m + 1 :] if spec.head in ("skip", "gated") else None
    gate = head[:, nr:].reshape(B, spec.q, spec.n_alpha) if spec.head == "gated" else None
    return Params(cell, r, r[:, :m], r[:, m], v, gate)


def pack(spec: NetSpec, params: Params) -> torch.Tensor:
    """Inverse of `unpack`: concatenate named parts into theta [B, n_theta]."""
    B = params.cell.shape[0]
    parts = [params.cell.reshape(B, -1), params.r]
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
    bias = theta[:, : spec.n_cell].view(B, spec.q, spec.hidden, spec.n_gates)[:, -1]  # [B, m, G]
    if spec.cell == "lstm":
        bias[:, :, 1] = -gate_bias  # input gate
        bias[:, :, 2] = gate_bias  # forget gate
        bias[:, :, 3] = -gate_bias  # output gate
    else:
        bias[:, :, 0] = -gate_bias  # update gate
    return theta


def split_state(spec: NetSpec, h: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """State [B, S] -> (c [B, m] or None, y [B, m])."""
    if spec.cell == "lstm":
        return h[:, : spec.hidden], h[:, spec.hidden :]
    return None, h


def lstm_preactivation(
    cell: torch.Tensor, h: torch.Tensor, x: torch.Tensor, m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """u = [x; y_prev; 1] [B, q] and the gate pre-activations a = u^T cell [B, m, G] of an LSTM."""
    B = x.shape[0]
    u = torch.cat([x, h[:, m:], x.new_ones(B, 1)], dim=1)  # [B, q]
    return u, torch.bmm(u.unsqueeze(1), cell).view(B, m, -1)


def lstm_gates(
    a: torch.Tensor, c_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LSTM step's activations from pre-activations a [B, m, 4] and c_{t-1} [B, m]:
    (s [B, m, 4] with the gates i, f, o in columns 1-3, z [B, m], c [B, m], tanh(c) [B, m], y [B, m]).

    The one place the step is written, for the forward pass and the closed-form BPTT alike (so the
    two agree to the bit). The sigmoid runs over all four columns, column 0 unused: for few keys a
    torch call costs more than the arithmetic, and one call on the whole is fewer than a slice and one."""
    s = torch.sigmoid(a)  # [B, m, 4]
    z = torch.tanh(a[:, :, 0])  # [B, m]
    _, i, f, o = s.unbind(2)  # [B, m] each
    c = i * z + f * c_prev  # [B, m]  (not addcmul: its fused rounding differs with the batch's layout)
    tc = torch.tanh(c)  # [B, m]
    return s, z, c, tc, o * tc


def lstm_activation(a: torch.Tensor, c_prev: torch.Tensor) -> torch.Tensor:
    """New state [c; y] [B, 2m] from pre-activations a [B, m, 4] and c_{t-1} [B, m]."""
    _, _, c, _, y = lstm_gates(a, c_prev)
    return torch.cat([c, y], dim=1)


def cell_step(spec: NetSpec, cell: torch.Tensor, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One step of B independent cells. cell [B, q, m*G], h [B, S], x [B, p] -> h' [B, S]."""
    B, m, G = x.shape[0], spec.hidden, spec.n_gates
    if spec.cell == "lstm":
        _, a = lstm_preactivation(cell, h, x, m)  # [B, m, G]
        return lstm_activation(a, h[:, :m])
    y_prev = h  # [B, m]
    # GRU: the candidate sees r * y_prev, so input and recurrent parts are applied separately
    p = spec.n_in
    x1 = torch.cat([x, x.new_ones(B, 1)], dim=1)  # [B, p+1]
    W = torch.cat([cell[:, :p], cell[:, -1:]], dim=1)  # [B, p+1, m*G]
    ax = torch.bmm(x1.unsqueeze(1), W).view(B, m, G)  # [B, m, G]  W x + b
    R = cell[:, p:-1].view(B, m, m, G)  # [B, m(in), m(out), G]
    ry = torch.bmm(y_prev.unsqueeze(1), R[..., :2].reshape(B, m, 2 * m)).view(B, m, 2)  # [B, m, 2]  R_u y, R_r y
    ur = torch.sigmoid(ax[:, :, :2] + ry)  # [B, m, 2]  u, r
    rn = torch.bmm((ur[:, :, 1] * y_prev).unsqueeze(1), R[..., 2]).squeeze(1)  # [B, m]  R_n (r * y)
    n = torch.tanh(ax[:, :, 2] + rn)  # [B, m]
    return (1 - ur[:, :, 0]) * y_prev + ur[:, :, 0] * n
