"""Numerics against independent references: torch.nn.LSTMCell, finite differences, the exact
Kalman filter, a conjugate Gaussian posterior, and the defining property of systematic resampling."""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models import kalman, rng
from models.cells import NetSpec, cell_step, pack, unpack
from models.learners import make_learner
from models.learners.ekf import DEKFLearner, EKFConfig, EKFLearner
from models.learners.mlp import MLPConfig, MLPLearner
from models.learners.pf import PFConfig, PFLearner, systematic_indices
from models.learners.window import window_forward, window_jacobian

D = torch.float64


def test_lstm_cell_matches_torch_lstmcell():
    spec = NetSpec(n_in=5, hidden=7)
    ref = torch.nn.LSTMCell(5, 7).double()
    W = torch.cat([ref.weight_ih, ref.weight_hh, (ref.bias_ih + ref.bias_hh)[:, None]], 1)  # [4m, q] gates i,f,g,o
    i, f, g, o = W.detach().chunk(4)
    cell = torch.stack([g, i, f, o], dim=2).permute(1, 0, 2).reshape(1, 13, 28)  # ours: [q, m, G], gates z,i,f,o
    x, c, y = torch.randn(1, 5, dtype=D), torch.randn(1, 7, dtype=D), torch.randn(1, 7, dtype=D)
    h = cell_step(spec, cell, torch.cat([c, y], 1), x)
    y_ref, c_ref = ref(x, (y, c))
    torch.testing.assert_close(h[:, :7], c_ref.detach())
    torch.testing.assert_close(h[:, 7:], y_ref.detach())


def test_gru_cell_matches_equations():
    spec = NetSpec(n_in=3, hidden=4, cell="gru")
    theta = torch.randn(2, spec.n_theta, dtype=D)
    cg = unpack(spec, theta).cell.view(2, 8, 4, 3).permute(0, 2, 3, 1)  # [B, m, G, q]
    x, y = torch.randn(2, 3, dtype=D), torch.randn(2, 4, dtype=D)
    W, R, b = cg[..., :3], cg[..., 3:7], cg[..., 7]
    def pre(g, h):
        return torch.einsum("bmp,bp->bm", W[:, :, g], x) + torch.einsum("bmk,bk->bm", R[:, :, g], h) + b[:, :, g]

    u, r = torch.sigmoid(pre(0, y)), torch.sigmoid(pre(1, y))
    n = torch.tanh(pre(2, r * y))
    torch.testing.assert_close(cell_step(spec, unpack(spec, theta).cell, y, x), (1 - u) * y + u * n)


HEADS = [("plain", "scalar"), ("skip", "scalar"), ("gated", "scalar"), ("gated", "vector")]


@pytest.mark.parametrize("head,gate", HEADS)
def test_pack_unpack_round_trip(head, gate):
    spec = NetSpec(n_in=3, hidden=5, head=head, gate=gate)
    theta = torch.randn(4, spec.n_theta)
    assert torch.equal(pack(spec, unpack(spec, theta)), theta)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("head,gate", [("plain", "scalar"), ("skip", "scalar"), ("gated", "vector")])
def test_window_jacobian_matches_finite_differences(cell, head, gate):
    spec = NetSpec(n_in=3, hidden=4, cell=cell, head=head, gate=gate)
    g = torch.Generator().manual_seed(1)
    theta = 0.5 * torch.randn(2, spec.n_theta, generator=g, dtype=D)
    h0 = 0.3 * torch.randn(2, spec.state_dim, generator=g, dtype=D)
    xbuf, x = torch.randn(2, 4, 3, generator=g, dtype=D), torch.randn(2, 3, generator=g, dtype=D)
    _, H, _ = window_jacobian(spec, theta, h0, xbuf, x)
    eps = 1e-6
    idx = torch.randperm(spec.n_theta, generator=g)[:40]
    for j in idx.tolist():
        tp, tm = theta.clone(), theta.clone()
        tp[:, j] += eps
        tm[:, j] -= eps
        fd = (window_forward(spec, tp, h0, xbuf, x)[0] - window_forward(spec, tm, h0, xbuf, x)[0]) / (2 * eps)
        torch.testing.assert_close(H[:, j], fd, rtol=1e-6, atol=1e-8)


def test_sgd_step_is_gradient_descent_on_squared_error():
    spec = NetSpec(n_in=3, hidden=4)
    L = make_learner("sgd", spec, dtype=D, window=1, lr=0.05, clip=1e9, optimizer="sgd")
    st = L.init_state(torch.arange(2))
    x, d = torch.randn(2, 3, dtype=D), torch.randn(2, dtype=D)
    theta = st["theta"].clone().requires_grad_(True)
    loss = 0.5 * ((d - window_forward(spec, theta, st["h0"], st["xbuf"], x)[0]) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, theta)
    _, _, st = L.step(st, x, d)
    torch.testing.assert_close(st["theta"], theta.detach() - 0.05 * grad)


def test_sgd_default_adam_equals_torch_adam_on_squared_error():
    """The default optimiser, step for step against torch.optim.Adam on each tick's 0.5 e^2."""
    spec = NetSpec(n_in=3, hidden=4)
    L = make_learner("sgd", spec, dtype=D, clip=1e9, head_step=0.0)
    assert L.config.optimizer == "adam" and L.config.window == 1
    st = L.init_state(torch.arange(2))
    theta = st["theta"].clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=L.config.lr, betas=L.config.betas, eps=L.config.eps)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        x, d = torch.randn(2, 3, generator=g, dtype=D), torch.randn(2, generator=g, dtype=D)
        opt.zero_grad()
        (0.5 * ((d - window_forward(spec, theta, st["h0"], st["xbuf"], x)[0]) ** 2).sum()).backward()
        opt.step()
        _, _, st = L.step(st, x, d)
        torch.testing.assert_close(st["theta"], theta.detach(), rtol=1e-10, atol=1e-12)


def test_sgd_default_read_out_takes_the_nlms_step():
    """With head_step (the default), the read-out r moves by head_step e phi / (1 + |phi|^2), the
    cell weights as Adam moves them."""
    spec = NetSpec(n_in=3, hidden=4, head="skip")
    L = make_learner("sgd", spec, dtype=D, clip=1e9)
    adam_only = make_learner("sgd", spec, dtype=D, clip=1e9, head_step=0.0)
    st = L.init_state(torch.arange(2))
    st2 = {k: v.clone() for k, v in st.items()}
    x, d = torch.randn(2, 3, dtype=D), torch.randn(2, dtype=D)
    theta = st["theta"].clone().requires_grad_(True)
    d_hat = window_forward(spec, theta, st["h0"], st["xbuf"], x)[0]
    (phi,) = torch.autograd.grad(d_hat.sum(), theta)
    phi = phi[:, spec.n_cell : spec.n_cell + spec.n_readout]  # d d_hat / d r
    e = d - d_hat.detach()
    L.step(st, x, d)
    adam_only.step(st2, x, d)
    r = slice(spec.n_cell, spec.n_cell + spec.n_readout)
    want = theta.detach()[:, r] + L.config.head_step * e.unsqueeze(1) * phi / (1 + (phi * phi).sum(1, keepdim=True))
    torch.testing.assert_close(st["theta"][:, r], want)
    torch.testing.assert_close(st["theta"][:, : spec.n_cell], st2["theta"][:, : spec.n_cell])


def test_sgd_read_out_step_follows_the_lag_1_correlation_of_its_errors():
    """The default read-out step is head_step + (head_step_max - head_step) rho, rho the errors' lag-1
    correlation (running means of e_t e_t-1 over e_t^2, both from 0, clamped to [0, 1]): near the top on a ramp the
    estimate lags (correlated errors), near the bottom on white noise; and the NLMS move uses that step."""
    spec = NetSpec(n_in=1, hidden=3, head="skip")
    L = make_learner("sgd", spec, dtype=D, clip=1e9)
    c = L.config
    assert c.head_step_max > c.head_step > 0 and L.added_state == ("e_prev", "e_corr", "e_sq")
    g = torch.Generator().manual_seed(1)
    rho = {}
    for kind in ("ramp", "noise"):
        st = L.init_state(torch.arange(1))
        for t in range(400):
            x = torch.zeros(1, 1, dtype=D)
            d = torch.tensor([0.01 * t], dtype=D) if kind == "ramp" else torch.randn(1, generator=g, dtype=D)
            L.step(st, x, d)
        rho[kind] = float(torch.clamp(st["e_corr"] / st["e_sq"], 0, 1))
    assert rho["ramp"] > 0.7 and rho["noise"] < 0.2, rho
    # one step, exactly: the read-out moves by the step the updated correlation gives
    adam_only = make_learner("sgd", spec, dtype=D, clip=1e9, head_step=0.0, head_step_max=0.0)
    st2 = {k: v.clone() for k, v in st.items()}
    x, d = torch.randn(1, 1, generator=g, dtype=D), torch.randn(1, generator=g, dtype=D)
    theta = st["theta"].clone().requires_grad_(True)
    d_hat = window_forward(spec, theta, st["h0"], st["xbuf"], x)[0]
    (phi,) = torch.autograd.grad(d_hat.sum(), theta)
    r = slice(spec.n_cell, spec.n_cell + spec.n_readout)
    phi = phi[:, r]
    e = d - d_hat.detach()
    corr = (1 - c.var_decay) * st["e_corr"] + c.var_decay * e * st["e_prev"]
    sq = (1 - c.var_decay) * st["e_sq"] + c.var_decay * e * e
    step = c.head_step + (c.head_step_max - c.head_step) * torch.clamp(corr / sq, 0, 1)
    L.step(st, x, d)
    adam_only.step({k: v for k, v in st2.items() if k not in L.added_state}, x, d)
    want = theta.detach()[:, r] + (step * e).unsqueeze(1) * phi / (1 + (phi * phi).sum(1, keepdim=True))
    torch.testing.assert_close(st["theta"][:, r], want)


@pytest.mark.parametrize("joseph", [False, True])
def test_kalman_update_equals_exact_kalman_filter(joseph):
    """Linear-Gaussian model d_t = h_t^T theta_t + eps, theta_t = theta_{t-1} + eta: the one update
    every filter uses (models.kalman) must reproduce the textbook Kalman filter (numpy, float64)
    step for step, with the batch laid out as one series or as [2, 3] rows of particles."""
    rs = np.random.default_rng(0)
    n, T, R, q = 5, 200, 0.3, 1e-3
    theta_true = rs.normal(size=n)
    m_ref, P_ref = np.zeros(n), 10 * np.eye(n)
    theta, P = torch.zeros(1, n, dtype=D), 10 * torch.eye(n, dtype=D)[None]
    theta_b, Pb = torch.zeros(2, 3, n, dtype=D), 10 * torch.eye(n, dtype=D).expand(2, 3, n, n).clone()
    for _ in range(T):
        theta_true = theta_true + math.sqrt(q) * rs.normal(size=n)
        h = rs.normal(size=n)
        d = h @ theta_true + math.sqrt(R) * rs.normal()
        # textbook: update with (h, d), then predict through the random walk
        S_ref = h @ P_ref @ h + R
        K = P_ref @ h / S_ref
        m_ref = m_ref + K * (d - h @ m_ref)
        P_ref = (np.eye(n) - np.outer(K, h)) @ P_ref + q * np.eye(n)
        H = torch.from_numpy(h)[None]  # [1, n]
        e = torch.tensor([d], dtype=D) - (theta * H).sum(1)
        (step,), S = kalman.update([(P, H)], e, torch.tensor([R], dtype=D), joseph)
        theta = theta + step
        kalman.add_diagonal(P, torch.tensor([q], dtype=D))
        assert abs(float(S[0]) - S_ref) < 1e-9 * S_ref
        # the same filter six times over, batch [2, 3] (a particle layout): each row is the textbook one
        Hb = H.expand(2, 3, n)
        (step_b,), S_b = kalman.update([(Pb, Hb)], d - (theta_b * Hb).sum(-1), torch.full((2, 3), R, dtype=D), joseph)
        theta_b = theta_b + step_b
        kalman.add_diagonal(Pb, q)
        torch.testing.assert_close(S_b, S.expand(2, 3), rtol=1e-12, atol=0)
    np.testing.assert_allclose(theta[0].numpy(), m_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(P[0].numpy(), P_ref, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(theta_b.reshape(6, n).numpy(), np.tile(m_ref, (6, 1)), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(Pb.reshape(6, n, n).numpy(), np.tile(P_ref, (6, 1, 1)), rtol=1e-8, atol=1e-12)


def test_decoupled_blocks_share_one_innovation_and_equal_the_global_filter_on_a_block_prior():
    """Two blocks (the DEKF's split) from a block-diagonal prior: one update gives the global filter's
    S, mean step and within-block covariances (its cross-covariance is what decoupling drops)."""
    rs = np.random.default_rng(1)
    B, n1, n2 = 4, 3, 2
    P1 = torch.from_numpy(np.stack([np.eye(n1) * (1 + i) for i in range(B)]))  # [B, n1, n1]
    P2 = torch.from_numpy(np.stack([np.eye(n2) * 0.5 for _ in range(B)]))  # [B, n2, n2]
    H1, H2 = torch.from_numpy(rs.normal(size=(B, n1))), torch.from_numpy(rs.normal(size=(B, n2)))
    e, R = torch.from_numpy(rs.normal(size=B)), torch.full((B,), 0.3, dtype=D)
    Pg = torch.zeros(B, n1 + n2, n1 + n2, dtype=D)
    Pg[:, :n1, :n1], Pg[:, n1:, n1:] = P1, P2
    (g,), Sg = kalman.update([(Pg, torch.cat([H1, H2], 1))], e, R)
    (s1, s2), S = kalman.update([(P1, H1), (P2, H2)], e, R)
    torch.testing.assert_close(S, Sg)
    torch.testing.assert_close(torch.cat([s1, s2], 1), g)
    torch.testing.assert_close(P1, Pg[:, :n1, :n1])
    torch.testing.assert_close(P2, Pg[:, n1:, n1:])


def test_ekf_learner_on_linear_head_is_the_kalman_filter_on_v():
    """With every weight but the direct path v frozen (P0 = 0 except on v), the EKF learner's
    estimate of v must follow the exact Kalman filter for d_t = v^T x_t + b0 + w^T y_t + eps."""
    spec = NetSpec(n_in=3, hidden=2, head="skip")
    c = EKFConfig(p0=1.0, r_init=0.5, r_last=0.5, q_init=0.0, q_last=0.0, window=1)
    L = EKFLearner(spec, c, dtype=D)
    st = L.init_state(torch.arange(1))
    vsl = slice(spec.n_cell + spec.hidden + 1, spec.n_theta)
    mask = torch.zeros(spec.n_theta, dtype=D)
    mask[vsl] = 1
    st["P"] = torch.diag(mask)[None].clone()
    rs = np.random.default_rng(3)
    v_true = rs.normal(size=3)
    m, P = st["theta"][0, vsl].numpy().copy(), np.eye(3)
    for _ in range(100):
        x = rs.normal(size=3)
        mean, var = L.predict(st, torch.from_numpy(x)[None])
        other = float(mean[0]) - x @ m  # w^T y + b0, which P = 0 keeps fixed
        d = x @ v_true + other + 0.7 * rs.normal()
        S = x @ P @ x + 0.5
        assert abs(float(var[0]) - S) < 1e-9
        K = P @ x / S
        m, P = m + K * (d - other - x @ m), P - np.outer(K, x) @ P
        st = L.update(st, torch.from_numpy(x)[None], torch.tensor([d], dtype=D))
    np.testing.assert_allclose(st["theta"][0, vsl].numpy(), m, rtol=1e-8, atol=1e-10)


def test_dekf_first_step_equals_ekf_with_diagonal_prior():
    spec = NetSpec(n_in=3, hidden=4)
    c = EKFConfig(window=2)
    e, d_ = EKFLearner(spec, c, dtype=D), DEKFLearner(spec, c, dtype=D)
    se, sd = e.init_state(torch.arange(3)), d_.init_state(torch.arange(3))
    x, y = torch.randn(3, 3, dtype=D), torch.randn(3, dtype=D)
    m1, v1, se = e.step(se, x, y)
    m2, v2, sd = d_.step(sd, x, y)
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(se["theta"], sd["theta"])
    idx = spec.blocks_of(torch.arange(spec.n_cell)[None])[0, 1]  # theta indices of neuron 1's block
    torch.testing.assert_close(sd["Pc"][:, 1], se["P"][:, idx][:, :, idx])


def test_covariances_stay_symmetric_so_the_innovation_may_take_p_h_as_h_p():
    """`kalman.innovation` takes P H^T as (H P)^T, which holds for a symmetric P: after many DEKF and
    EKF steps (rank-1 corrections, the random walk, recurrent Jacobians) every P is symmetric to
    round-off, and the innovation equals the column product computed the textbook way."""
    spec = NetSpec(n_in=3, hidden=4)
    g = torch.Generator().manual_seed(3)
    for learner in (DEKFLearner(spec, EKFConfig(window=3), dtype=D), EKFLearner(spec, EKFConfig(), dtype=D)):
        state = learner.init_state(torch.arange(5))
        for _ in range(60):
            x, d = torch.randn(5, 3, generator=g, dtype=D), torch.randn(5, generator=g, dtype=D)
            state = learner.step(state, x, d)[2]
        for name in ("Pc", "Ph", "P"):
            if name not in state:
                continue
            P = state[name]
            torch.testing.assert_close(P, P.transpose(-1, -2), rtol=0, atol=1e-12 * float(P.abs().max()))
            H = torch.randn(P.shape[:-1], generator=g, dtype=D)
            (ph,), S = kalman.innovation([(P, H)], torch.zeros(P.shape[0], dtype=D))
            textbook = torch.matmul(P, H.unsqueeze(-1)).squeeze(-1)  # [*, n]  P H^T
            torch.testing.assert_close(ph, textbook, rtol=1e-12, atol=1e-12 * float(textbook.abs().max()))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_pf_ekf_move_is_each_particles_diagonal_ekf_step(cell):
    """move="ekf": particle i's cell weights take the EKF step of a diagonal P_i, with H_i its own
    Jacobian (autograd here) and S_i = H_i P_i H_i^T + phi^T Sigma^i phi + R."""
    spec = NetSpec(n_in=2, hidden=3, cell=cell, head="skip")
    c = PFConfig(n_particles=3, move="ekf", move_p0=0.5, move_q=0.0, theta_noise=0.0, threshold=0.01)
    L = PFLearner(spec, c, dtype=D)
    st = L.init_state(torch.arange(2))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # away from the zero read-out, so H is not zero
        st = L.update(st, torch.randn(2, 2, generator=g, dtype=D), torch.randn(2, generator=g, dtype=D))
    x, d = torch.randn(2, 2, generator=g, dtype=D), torch.randn(2, generator=g, dtype=D)
    before = {k: v.clone() for k, v in st.items()}

    def particle_mean(cell_flat: torch.Tensor) -> torch.Tensor:  # [B*N, n_cell] -> d_hat^i [B*N]
        probe = {**before, "cell": cell_flat.view_as(before["cell"])}
        return L._propagate(probe, x)[1].reshape(-1)

    cell0 = before["cell"].reshape(6, -1)
    H = torch.autograd.functional.jacobian(particle_mean, cell0).diagonal(dim1=0, dim2=1).T  # [6, n_cell]
    _, mean_i, _, var_i, _ = L._propagate(before, x)
    P = before["Pcell"].reshape(6, -1)
    S = (P * H * H).sum(1) + var_i.reshape(-1)
    innov = (d.unsqueeze(1) - mean_i).reshape(-1)
    L.step(st, x, d)
    torch.testing.assert_close(st["cell"].reshape(6, -1), cell0 + P * H * (innov / S).unsqueeze(1))
    torch.testing.assert_close(st["Pcell"].reshape(6, -1), P - (P * H) ** 2 / S.unsqueeze(1))


def test_pf_posterior_matches_conjugate_gaussian():
    """Model d_t = r^T phi_t + eps with a Gaussian prior on r (the PF's read-out) and particles that
    share their nonlinear weights: the filter's predictive mean and variance must be the exact
    Bayesian linear-regression posterior predictive."""
    spec = NetSpec(n_in=2, hidden=3, head="skip")
    cfg = PFConfig(n_particles=8, r=0.2, theta_noise=0.0, grad_step=0.0, readout_q=0.0, init_spread=0.0)
    L = PFLearner(spec, cfg, dtype=D)
    theta0 = 0.3 * torch.randn(1, spec.n_theta, dtype=D)
    st = L.init_state(torch.arange(1), theta0)
    prior = cfg.init_spread**2 + 1e-2
    st["Sigma"] = prior * torch.eye(spec.n_readout, dtype=D).expand(1, 8, -1, -1).clone()
    r0 = theta0[0, spec.n_cell : spec.n_cell + spec.n_readout].numpy()
    Phi, ds = [], []
    h = torch.zeros(1, spec.state_dim, dtype=D)
    cell = unpack(spec, theta0).cell
    rs = np.random.default_rng(0)
    r_true = rs.normal(size=spec.n_readout)
    for _ in range(60):
        x = torch.from_numpy(rs.normal(size=(1, 2)))
        h = cell_step(spec, cell, h, x)
        phi = np.concatenate([h[0, 3:].numpy(), [1.0], x[0].numpy()])
        # exact posterior predictive from the prior N(r0, prior I) and the data so far
        A = np.eye(len(r0)) / prior + sum(np.outer(p, p) for p in Phi) / cfg.r
        b = r0 / prior + sum(p * y for p, y in zip(Phi, ds, strict=True)) / cfg.r
        cov = np.linalg.inv(A)
        mean_ref, var_ref = phi @ cov @ b, phi @ cov @ phi + cfg.r
        mean, var = L.predict(st, x)
        assert abs(float(mean[0]) - mean_ref) < 1e-8 and abs(float(var[0]) - var_ref) < 1e-8
        d = float(phi @ r_true + math.sqrt(cfg.r) * rs.normal())
        st = L.update(st, x, torch.tensor([d], dtype=D))
        Phi.append(phi)
        ds.append(d)


def test_bootstrap_weights_and_resampling_recover_conjugate_posterior():
    """The PF's weighting (Gaussian log-likelihood, log-sum-exp) and systematic resampling on the
    scalar model theta ~ N(0, 1), d_t = theta + N(0, R): posterior mean within Monte-Carlo error."""
    N, R, T = 20_000, 0.5, 15
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(1, N, generator=g, dtype=D)
    logw = torch.full((1, N), -math.log(N), dtype=D)
    ds = 0.8 + math.sqrt(R) * torch.randn(T, generator=g, dtype=D)
    for t in range(T):
        logw = logw - 0.5 * (ds[t] - theta) ** 2 / R
        logw = logw - torch.logsumexp(logw, 1, keepdim=True)
        w = logw.exp()
        if 1 / (w * w).sum() < N / 2:
            idx = systematic_indices(w, torch.rand(1, 1, generator=g, dtype=D))
            theta = torch.gather(theta, 1, idx) + 0.0
            logw = torch.full((1, N), -math.log(N), dtype=D)
    post_var = 1 / (1 + T / R)
    post_mean = post_var * float(ds.sum()) / R
    est = float((logw.exp() * theta).sum())
    assert abs(est - post_mean) < 5 * math.sqrt(post_var / N) * 3  # MC error with resampling inflation


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60), st.floats(0.0, 0.999999))
def test_systematic_resampling_counts_within_one_of_n_w(raw, u):
    w = torch.tensor(raw, dtype=D) + 1e-12
    w = w / w.sum()
    N = len(raw)
    idx = systematic_indices(w[None], torch.tensor([[u]], dtype=D))[0]
    counts = torch.bincount(idx, minlength=N).to(D)
    assert int(counts.sum()) == N
    assert bool(((counts - N * w).abs() < 1 + 1e-9).all())


def test_rng_streams_are_per_key_and_counter_based():
    seeds = torch.tensor([5, 9, 5])
    a = rng.normal_rows(seeds, torch.tensor([0, 0, 0]), rng.STREAM_WALK, 4, 10)
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    b = rng.normal_rows(seeds[:1], torch.tensor([1]), rng.STREAM_WALK, 4, 10)
    assert not torch.equal(a[0], b[0])
    big = rng.normal_rows(torch.arange(200), torch.zeros(200, dtype=torch.int64), 2, 50, 100)
    assert abs(float(big.mean())) < 0.02 and abs(float(big.std()) - 1) < 0.02
    u = rng.uniform(torch.arange(10_000), torch.zeros(10_000, dtype=torch.int64), 3, 1)
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01


@pytest.mark.parametrize("compiled", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize("head", ["plain", "skip"])
@pytest.mark.parametrize("window", [1, 2, 5])
def test_closed_form_bptt_matches_autograd(head, window, compiled):
    """Both ways of the closed-form window BPTT (the compiled kernel that few rows take, the torch pass of
    wide batches) against autograd through the plain forward pass."""
    from models.learners.window import lstm_bptt, window_jacobian_parts

    spec = NetSpec(n_in=3, hidden=5, head=head)
    g = torch.Generator().manual_seed(2)
    theta = 0.5 * torch.randn(4, spec.n_theta, generator=g, dtype=D)
    h0 = 0.5 * torch.randn(4, spec.state_dim, generator=g, dtype=D)
    xbuf, x = torch.randn(4, window - 1, 3, generator=g, dtype=D), torch.randn(4, 3, generator=g, dtype=D)
    d_ref, (Hc, Hh), h_ref = window_jacobian_parts(spec, theta, h0, xbuf, x)
    d_hat, U, Delta, phi, h_first = lstm_bptt(spec, theta, h0, xbuf, x, compiled=compiled)
    torch.testing.assert_close(d_hat, d_ref)
    torch.testing.assert_close(h_first, h_ref)
    torch.testing.assert_close(torch.bmm(U.transpose(1, 2), Delta).reshape(4, -1), Hc)
    torch.testing.assert_close(phi, Hh)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize("head", ["plain", "skip"])
@pytest.mark.parametrize("window", [1, 2, 5])
def test_lstm_jacobian_matches_autograd(head, window, kernel, monkeypatch):
    """The Kalman filters' H: the kernel's own product (a few rows) and `bptt_jacobian` of the torch pass (a wide
    wave) against autograd, with d_hat and the window's next state."""
    from models.learners import bptt_kernel
    from models.learners.window import lstm_jacobian, window_jacobian

    spec = NetSpec(n_in=3, hidden=5, head=head)
    g = torch.Generator().manual_seed(5)
    theta = 0.5 * torch.randn(4, spec.n_theta, generator=g, dtype=D)
    h0 = 0.5 * torch.randn(4, spec.state_dim, generator=g, dtype=D)
    xbuf, x = torch.randn(4, window - 1, 3, generator=g, dtype=D), torch.randn(4, 3, generator=g, dtype=D)
    calls: list[int] = []
    real = bptt_kernel.lstm_jacobian
    monkeypatch.setattr(bptt_kernel, "lstm_jacobian", lambda *a: calls.append(1) or real(*a))
    if not kernel:
        monkeypatch.setattr(bptt_kernel, "MAX_WORK", 0)
    d_ref, H_ref, h_ref = window_jacobian(spec, theta, h0, xbuf, x)
    for got, ref in zip(lstm_jacobian(spec, theta, h0, xbuf, x), (d_ref, H_ref, h_ref), strict=True):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref)
    assert calls == ([1] if kernel else [])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("head", ["plain", "skip"])
@pytest.mark.parametrize("window", [1, 4, 10])
def test_compiled_bptt_agrees_with_the_torch_pass_within_rounding(head, window, dtype):
    """The kernel (`models.learners.bptt_kernel`) is the torch pass's arithmetic in another order: the same
    outputs to a few units of the float's last place, at the learners' own widths."""
    from models.learners.window import lstm_bptt

    spec = NetSpec(n_in=4, hidden=6, head=head)
    g = torch.Generator().manual_seed(3)
    theta = 0.5 * torch.randn(7, spec.n_theta, generator=g, dtype=dtype)
    h0 = 0.5 * torch.randn(7, spec.state_dim, generator=g, dtype=dtype)
    xbuf, x = torch.randn(7, window - 1, 4, generator=g, dtype=dtype), torch.randn(7, 4, generator=g, dtype=dtype)
    eps = torch.finfo(dtype).eps
    for a, b in zip(lstm_bptt(spec, theta, h0, xbuf, x, compiled=True),
                    lstm_bptt(spec, theta, h0, xbuf, x, compiled=False), strict=True):
        assert a.dtype == b.dtype == dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=16 * eps, atol=16 * eps)


def test_compiled_bptt_carries_a_broken_row_through_and_leaves_the_others():
    """A key whose weights went non-finite must come out non-finite (the bank then resets it); its neighbours in
    the wave are untouched by it. No fast-math assumption of finite values may drop that."""
    from models.learners.window import lstm_bptt

    spec = NetSpec(n_in=3, hidden=4, head="skip")
    g = torch.Generator().manual_seed(4)
    theta = 0.5 * torch.randn(3, spec.n_theta, generator=g)
    theta[1, 5] = float("nan")
    theta[2, spec.n_cell] = float("inf")  # a read-out weight
    h0, xbuf, x = torch.zeros(3, spec.state_dim), torch.randn(3, 4, 3, generator=g), torch.randn(3, 3, generator=g)
    d_hat, U, Delta, phi, h_first = lstm_bptt(spec, theta, h0, xbuf, x, compiled=True)
    assert not torch.isfinite(d_hat[1]) and not torch.isfinite(d_hat[2])
    assert not torch.isfinite(Delta[1]).all() and not torch.isfinite(h_first[1]).all()
    ref = lstm_bptt(spec, theta[:1], h0[:1], xbuf[:1], x[:1], compiled=False)
    for a, b in zip((d_hat, U, Delta, phi, h_first), ref, strict=True):
        torch.testing.assert_close(a[:1], b, rtol=1e-5, atol=1e-6)


def test_bptt_takes_the_kernel_for_few_rows_and_torch_where_autograd_or_width_asks(monkeypatch):
    from models.learners import bptt_kernel
    from models.learners.window import lstm_bptt

    assert bptt_kernel.usable(torch.float32)  # compiled (or loaded) before counting
    calls = []
    real = bptt_kernel.lstm_bptt
    monkeypatch.setattr(bptt_kernel, "lstm_bptt", lambda *a: calls.append(a[-1].shape[0]) or real(*a))
    spec = NetSpec(n_in=2, hidden=3)

    def inputs(B: int) -> tuple[torch.Tensor, ...]:
        return torch.randn(B, spec.n_theta), torch.zeros(B, 6), torch.randn(B, 2, 2), torch.randn(B, 2)

    most = bptt_kernel.most_rows(spec.hidden, 3)  # the most rows of this net and window that the kernel takes
    with torch.no_grad():
        lstm_bptt(spec, *inputs(most))
        lstm_bptt(spec, *inputs(most + 1))
    assert calls == [most]
    theta, h0, xbuf, x = inputs(2)
    theta.requires_grad_(True)
    d_hat = lstm_bptt(spec, theta, h0, xbuf, x)[0]  # differentiated through: the torch pass
    (grad,) = torch.autograd.grad(d_hat.sum(), theta)
    assert calls == [most] and grad.abs().sum() > 0


def test_bptt_falls_back_to_torch_with_one_warning_where_the_kernel_cannot_compile(monkeypatch):
    from models.learners import bptt_kernel
    from models.learners.window import lstm_bptt

    def broken() -> None:
        raise ImportError("no numba here")

    monkeypatch.setattr(bptt_kernel.KERNEL, "compiled", broken)
    monkeypatch.setattr(bptt_kernel.KERNEL, "_usable", {})
    spec = NetSpec(n_in=2, hidden=3)
    theta, h0, xbuf, x = torch.randn(2, spec.n_theta), torch.zeros(2, 6), torch.randn(2, 2, 2), torch.randn(2, 2)
    with pytest.warns(RuntimeWarning, match="no numba here"):
        first = lstm_bptt(spec, theta, h0, xbuf, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next wave says nothing
        again = lstm_bptt(spec, theta, h0, xbuf, x)
    for a, b, c in zip(first, again, lstm_bptt(spec, theta, h0, xbuf, x, compiled=False), strict=True):
        assert torch.equal(a, c) and torch.equal(b, c)


@pytest.mark.parametrize("window", [1, 4])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sgd_closed_form_path_equals_autograd_path(window, optimizer):
    spec = NetSpec(n_in=3, hidden=4)
    fast = make_learner("sgd", spec, dtype=D, window=window, clip=0.5, optimizer=optimizer)
    st_fast = fast.init_state(torch.arange(3))
    st_slow = {k: v.clone() for k, v in st_fast.items()}
    x, d = torch.randn(20, 3, 3, dtype=D), 3 * torch.randn(20, 3, dtype=D)
    for t in range(20):
        m1, _, st_fast = fast.step(st_fast, x[t], d[t])
        m2, _, st_slow = fast._autograd_step(st_slow, x[t], d[t])
        torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(st_fast["theta"], st_slow["theta"])


@pytest.mark.parametrize("move", ["ekf", "gradient"])
def test_pf_closed_form_moves_match_autograd(move):
    """The LSTM particle filter's moves use each particle's d d_hat / d a in closed form (`lstm_bptt`,
    window 1) and the particle-EKF step a block of keys at a time; the autograd path (what a GRU or a gated
    head takes) must give the same filter, step for step."""
    spec = NetSpec(n_in=2, hidden=3, head="skip")
    c = PFConfig(n_particles=5, move=move, threshold=0.6)  # resampling happens too
    fast, slow = PFLearner(spec, c, dtype=D), PFLearner(spec, c, dtype=D)
    slow.closed_form = slow.memoises = False
    assert fast.closed_form
    sf, ss = fast.init_state(torch.arange(3)), slow.init_state(torch.arange(3))
    g = torch.Generator().manual_seed(1)
    for _ in range(12):
        x, d = torch.randn(3, 2, generator=g, dtype=D), torch.randn(3, generator=g, dtype=D)
        mf, vf, sf = fast.step(sf, x, d)
        ms, vs, ss = slow.step(ss, x, d)
        torch.testing.assert_close(mf, ms)
        torch.testing.assert_close(vf, vs)
    for k in sf:
        torch.testing.assert_close(sf[k], ss[k], msg=k)


def test_mlp_docstring_example_runs():
    from models.learners import mlp

    result = doctest.testmod(mlp, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize("skip", [False, True])
def test_mlp_learner_is_the_textbook_ekf_of_its_net(skip):
    """The feed-forward learner's step is the EKF's: H the autograd gradient of d_hat = v^T tanh(W^T x + b)
    + c (+ a^T x) in theta, S = H P H^T + R, theta += P H^T e / S, P -= P H^T H P / S, then P += q I, with R
    and q on the EKF's schedule; run over 30 ticks against that written out in float64 with autograd."""
    spec = NetSpec(n_in=3, hidden=5)
    c = MLPConfig(skip=skip, r_steps=10, q_steps=10)
    L = MLPLearner(spec, c, dtype=D)
    st = L.init_state(torch.arange(2))
    theta, P = st["theta"].clone(), st["P"].clone()  # [B, n], [B, n, n]
    p, m = spec.n_in, spec.hidden

    def net(th: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        W, b, v = th[: p * m].view(p, m), th[p * m : p * m + m], th[p * m + m : p * m + 2 * m]
        out = v @ torch.tanh(x @ W + b) + th[-1]
        return out + th[p * m + 2 * m : p * m + 2 * m + p] @ x if skip else out

    g = torch.Generator().manual_seed(5)
    for t in range(30):
        x, d = torch.randn(2, p, generator=g, dtype=D), torch.randn(2, generator=g, dtype=D)
        frac = min(t / 10, 1.0)
        R, q = c.r_init + (c.r_last - c.r_init) * frac, c.q_init + (c.q_last - c.q_init) * frac
        mean, var, st = L.step(st, x, d)
        for b in range(2):
            th = theta[b].clone().requires_grad_(True)
            out = net(th, x[b])
            (H,) = torch.autograd.grad(out, th)
            S = H @ P[b] @ H + R
            o, s_ = float(out.detach()), float(S)
            assert abs(float(mean[b]) - o) < 1e-12 and abs(float(var[b]) - s_) < 1e-9 * s_
            K = P[b] @ H / S
            theta[b] = theta[b] + K * (d[b] - out.detach())
            P[b] = P[b] - torch.outer(K, H @ P[b]) + q * torch.eye(len(H), dtype=D)
    torch.testing.assert_close(st["theta"], theta, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(st["P"], P, rtol=1e-9, atol=1e-11)
