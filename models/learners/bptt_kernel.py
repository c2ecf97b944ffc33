"""The closed-form LSTM window BPTT (`window.lstm_bptt`) compiled, for waves of few rows.

For a few keys a wave's cost is the count of torch calls, not their arithmetic: the window BPTT
makes about 20 a step, 200 at window 10, and each costs 1-3 us whatever the size. That one pass
was a third of the default learner's one-key wave (the two Kalman experts' window-10 Jacobians).
Here the same recursion is one compiled loop over rows, steps and units (numba), a single call:
30 us instead of 400 for one key at m=8, window 10. Over wide batches torch's vectorised kernels
(its exp and tanh above all) are faster, so `window.lstm_bptt` takes this path for small waves only
(`MAX_WORK`; `benchmarks/speed.py`'s kernel table measures the crossover).

The arithmetic is `window.lstm_bptt`'s, written as loops: forward over u_k = [x_k; y_{k-1}; 1],

    a_k = u_k^T cell                      gate pre-activations, columns j*4 + g, gates z, i, f, o
    c_k = i_k z_k + f_k c_{k-1}           y_k = o_k tanh(c_k)

then backward from dy_W = w (the read-out's weights on y):

    dc_k += dy_k o_k (1 - tanh(c_k)^2)
    delta_k = [dc_k i_k (1 - z_k^2), dc_k z_k i_k (1 - i_k), dc_k c_{k-1} f_k (1 - f_k), dy_k tanh(c_k) o_k (1 - o_k)]
    dy_{k-1} = R delta_k                  (the recurrent rows of cell)      dc_{k-1} = dc_k f_k

It agrees with the torch pass within float rounding (products summed in another order), which a
unit test checks for both heads, several windows and both float widths. Compiling, caching and the
fallback where numba cannot compile are `models.jit`'s.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from models.jit import Kernel, array

# A wave takes this kernel while rows x m^2 x (window + 3) is at most this x 13 (rows: keys, or keys x particles):
# at window 10, 48 rows at m=16, 192 at m=8, 341 at m=6; at window 1 (SGD, the particle filter) 3.25x as many,
# 156 rows at m=16. The kernel's time grows with the rows, the steps and the square of m (its products);
# torch's is a fixed cost (the gates' pass after the loop) plus one a step, hardly growing with either until its
# vectorised arithmetic takes over. On one torch thread (the daemon's for a wave under 128 ticks) they cross near
# 45 rows at m=16 and window 10, near 250 at m=8, and near 160 at m=16 and window 1 (benchmarks/speed.py,
# "the window BPTT").
MAX_WORK = 48 * 16 * 16


def most_rows(m: int, window: int) -> int:
    """The most rows of a net of m units over this window that take the kernel."""
    return MAX_WORK * 13 // (m * m * (window + 3))

def _bptt_rows(cw, c0, rw, r0, h0, xbuf, x, skip, d_hat, U, Delta, phi, h_first, H):  # pragma: no cover - compiled
    """One row b at a time: the cell's weights cw[b, c0 + i*4m + j*4 + g] (input i, neuron j, gate g), the
    read-out rw[b, r0 + k], state h0 [B, 2m] = [c; y], inputs xbuf [B, W-1, p] then x [B, p]; writes
    d_hat [B], U [B, W, q], Delta [B, W, 4m], phi [B, nr] and h_first [B, 2m] (the state after the first input),
    and, where H is [B, q 4m + nr] rather than [B, 0], the Jacobian H = [sum_k u_k (x) delta_k, phi] itself."""
    B, p = x.shape
    W = xbuf.shape[1] + 1
    m = h0.shape[1] // 2
    q = p + m + 1
    G = 4 * m
    nr = phi.shape[1]
    dt = h0.dtype
    S = np.empty((W, m, 4), dt)  # the gates' activations of each step: z, i, f, o
    TC = np.empty((W, m), dt)  # tanh(c_k)
    CP = np.empty((W, m), dt)  # c_{k-1}
    a = np.empty(G, dt)
    c = np.empty(m, dt)
    y = np.empty(m, dt)
    dy = np.empty(m, dt)
    dc = np.empty(m, dt)
    for b in range(B):
        for j in range(m):
            c[j] = h0[b, j]
            y[j] = h0[b, m + j]
        for k in range(W):
            for i in range(p):
                U[b, k, i] = xbuf[b, k, i] if k < W - 1 else x[b, i]
            for j in range(m):
                U[b, k, p + j] = y[j]
            U[b, k, q - 1] = 1.0
            a[:] = 0.0
            for i in range(q):
                ui = U[b, k, i]
                base = c0 + i * G
                for g in range(G):
                    a[g] += ui * cw[b, base + g]
            for j in range(m):
                z = math.tanh(a[4 * j])
                ig = 1.0 / (1.0 + math.exp(-a[4 * j + 1]))
                fg = 1.0 / (1.0 + math.exp(-a[4 * j + 2]))
                og = 1.0 / (1.0 + math.exp(-a[4 * j + 3]))
                CP[k, j] = c[j]
                c[j] = ig * z + fg * c[j]
                tc = math.tanh(c[j])
                S[k, j, 0], S[k, j, 1], S[k, j, 2], S[k, j, 3] = z, ig, fg, og
                TC[k, j] = tc
                y[j] = og * tc
            if k == 0:
                for j in range(m):
                    h_first[b, j] = c[j]
                    h_first[b, m + j] = y[j]
        for j in range(m):
            phi[b, j] = y[j]
        phi[b, m] = 1.0
        if skip:
            for i in range(p):
                phi[b, m + 1 + i] = x[b, i]
        acc = 0.0
        for i in range(nr):
            acc += rw[b, r0 + i] * phi[b, i]
        d_hat[b] = acc
        for j in range(m):
            dy[j] = rw[b, r0 + j]
            dc[j] = 0.0
        for k in range(W - 1, -1, -1):
            for j in range(m):
                z, ig, fg, og = S[k, j, 0], S[k, j, 1], S[k, j, 2], S[k, j, 3]
                tc = TC[k, j]
                dc[j] += dy[j] * og * (1.0 - tc * tc)
                Delta[b, k, 4 * j] = dc[j] * ig * (1.0 - z * z)
                Delta[b, k, 4 * j + 1] = dc[j] * z * ig * (1.0 - ig)
                Delta[b, k, 4 * j + 2] = dc[j] * CP[k, j] * fg * (1.0 - fg)
                Delta[b, k, 4 * j + 3] = dy[j] * tc * og * (1.0 - og)
            if k > 0:
                for jj in range(m):
                    base = c0 + (p + jj) * G
                    acc = 0.0
                    for g in range(G):
                        acc += Delta[b, k, g] * cw[b, base + g]
                    dy[jj] = acc
                for j in range(m):
                    dc[j] *= S[k, j, 2]
        if H.shape[1] > 0:  # `window.bptt_jacobian`'s product and concatenation, in the same loop
            for i in range(q):
                for g in range(G):
                    acc = 0.0
                    for k in range(W):
                        acc += U[b, k, i] * Delta[b, k, g]
                    H[b, i * G + g] = acc
            for i in range(nr):
                H[b, q * G + i] = phi[b, i]


def warm_up(dtype: torch.dtype = torch.float32) -> None:
    """Run the kernel once for this float width, on one row of the smallest net (compiling or loading it)."""
    z = torch.zeros
    lstm_jacobian(1, False, (z(1, 12, dtype=dtype), 0), (z(1, 2, dtype=dtype), 0), z(1, 2, dtype=dtype),
                  z(1, 0, 1, dtype=dtype), z(1, 1, dtype=dtype))


KERNEL = Kernel(_bptt_rows, warm_up, "window BPTT")
usable = KERNEL.usable  # whether it runs here for a float width (`models.jit.Kernel.usable`)


def lstm_bptt(m: int, skip: bool, cell: tuple[torch.Tensor, int], readout: tuple[torch.Tensor, int],
              h0: torch.Tensor, xbuf: torch.Tensor, x: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`window.lstm_bptt`'s (d_hat [B], U [B, W, q], Delta [B, W, m*4], phi [B, nr], h_first [B, 2m]) in one call.

    `cell` and `readout` are (a [B, n] tensor, the column its part starts at): theta itself twice, or the
    particle filter's cell and head tensors. Every tensor is read through numpy, without a copy when it is
    contiguous."""
    d_hat, U, Delta, phi, h_first, _ = _run(m, skip, cell, readout, h0, xbuf, x, False)
    return (torch.from_numpy(d_hat), torch.from_numpy(U), torch.from_numpy(Delta), torch.from_numpy(phi),
            torch.from_numpy(h_first))


def lstm_jacobian(m: int, skip: bool, cell: tuple[torch.Tensor, int], readout: tuple[torch.Tensor, int],
                  h0: torch.Tensor, xbuf: torch.Tensor, x: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`window.lstm_jacobian`'s (d_hat [B], H [B, n_cell + nr], h_first [B, 2m]) in one call: `lstm_bptt` with
    `window.bptt_jacobian` done in its loop."""
    d_hat, _, _, _, h_first, H = _run(m, skip, cell, readout, h0, xbuf, x, True)
    return torch.from_numpy(d_hat), torch.from_numpy(H), torch.from_numpy(h_first)


def _run(m: int, skip: bool, cell: tuple[torch.Tensor, int], readout: tuple[torch.Tensor, int], h0: torch.Tensor,
         xbuf: torch.Tensor, x: torch.Tensor, jacobian: bool) -> tuple[np.ndarray, ...]:
    B, p = x.shape
    W = xbuf.shape[1] + 1
    q = p + m + 1
    nr = m + 1 + (p if skip else 0)
    cw, rw = array(cell[0]), array(readout[0])
    out_dtype = cw.dtype
    d_hat = np.empty(B, out_dtype)
    U = np.empty((B, W, q), out_dtype)
    Delta = np.empty((B, W, 4 * m), out_dtype)
    phi = np.empty((B, nr), out_dtype)
    h_first = np.empty((B, 2 * m), out_dtype)
    H = np.empty((B, q * 4 * m + nr) if jacobian else (B, 0), out_dtype)
    KERNEL.compiled()(cw, cell[1], rw, readout[1], array(h0), array(xbuf), array(x), skip, d_hat, U, Delta, phi,
                      h_first, H)
    return d_hat, U, Delta, phi, h_first, H
